//! Shared helpers: the Python oracle (run once per test binary) and tensor comparisons.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tch::{Kind, Tensor};

/// `$SPAR_PYTHON`, or None with a printed reason (the test then skips).
pub fn python() -> Option<PathBuf> {
    match std::env::var_os("SPAR_PYTHON") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            eprintln!(
                "SKIP: SPAR_PYTHON is not set (source scripts/bootstrap.sh to run the transformers parity tests)"
            );
            None
        }
    }
}

pub fn run_py(script: &str, args: &[&str]) -> anyhow::Result<()> {
    let py = python().ok_or_else(|| anyhow::anyhow!("no python"))?;
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(script);
    let out = std::process::Command::new(py)
        .arg(&path)
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()?;
    if !out.status.success() {
        anyhow::bail!(
            "{} failed:\n{}\n{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The tiny configs every parity test runs over.
pub fn specs() -> Value {
    let dense = |name: &str, seed: i64, extra: Value, grads: Vec<&str>| {
        let mut c = json!({"model_type": "qwen3", "vocab_size": 96, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
            "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "tie_word_embeddings": false});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        json!({"name": name, "seed": seed, "config": c, "grad_params": grads,
               "prompts": [[1, 5, 9, 33], [7, 2, 80, 14, 3], [11, 60], [42, 17, 4, 4, 90, 23]]})
    };
    let moe = |name: &str, seed: i64, extra: Value, grads: Vec<&str>| {
        let mut c = json!({"model_type": "qwen3_moe", "vocab_size": 96, "hidden_size": 32, "intermediate_size": 48,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 8,
            "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "tie_word_embeddings": false,
            "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 16, "norm_topk_prob": true,
            "decoder_sparse_step": 1, "mlp_only_layers": [], "router_aux_loss_coef": 0.001});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        json!({"name": name, "seed": seed, "config": c, "grad_params": grads,
               "prompts": [[1, 5, 9, 33], [7, 2, 80, 14, 3], [11, 60], [42, 17, 4, 4, 90, 23]]})
    };
    json!([
        dense(
            "dense_tied_gqa2",
            1,
            json!({"tie_word_embeddings": true}),
            vec![
                "model.embed_tokens.weight",
                "model.layers.0.self_attn.q_proj.weight",
                "model.layers.1.self_attn.k_norm.weight",
                "model.norm.weight"
            ]
        ),
        dense(
            "dense_untied_mha_linear_rope",
            2,
            json!({"num_key_value_heads": 4, "head_dim": 8, "rope_theta": 1000000.0, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
            vec![
                "lm_head.weight",
                "model.layers.1.mlp.down_proj.weight",
                "model.layers.0.input_layernorm.weight"
            ]
        ),
        moe(
            "moe_norm_topk_gqa4",
            3,
            json!({}),
            vec![
                "model.layers.0.mlp.gate.weight",
                "model.layers.1.mlp.experts.gate_up_proj",
                "model.layers.0.mlp.experts.down_proj",
                "model.layers.1.self_attn.v_proj.weight"
            ]
        ),
        moe(
            "moe_sparse_step_mlp_only_yarn",
            4,
            json!({"num_hidden_layers": 4, "decoder_sparse_step": 2, "mlp_only_layers": [3], "norm_topk_prob": false,
                   "num_key_value_heads": 2, "moe_intermediate_size": 6, "tie_word_embeddings": true,
                   "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}}),
            vec![
                "model.layers.1.mlp.gate.weight",
                "model.layers.1.mlp.experts.gate_up_proj",
                "model.layers.0.mlp.gate_proj.weight",
                "model.embed_tokens.weight"
            ]
        ),
    ])
}

/// Output of `hf_oracle.py make`, produced once per test binary.
pub struct Oracle {
    pub dir: PathBuf,
    pub tensors: Vec<(String, Tensor)>,
    pub meta: Value,
    pub specs: Value,
    _tmp: tempfile::TempDir,
}

unsafe impl Sync for Oracle {}
unsafe impl Send for Oracle {}

impl Oracle {
    pub fn get(&self, name: &str) -> Tensor {
        self.tensors
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("oracle lacks {name}"))
            .1
            .shallow_clone()
    }
    pub fn spec_names(&self) -> Vec<String> {
        self.specs
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    }
    pub fn spec(&self, name: &str) -> &Value {
        self.specs
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()
    }
}

static ORACLE: OnceLock<Option<Oracle>> = OnceLock::new();

/// The oracle, or None (skip) without Python.
pub fn oracle() -> Option<&'static Oracle> {
    ORACLE
        .get_or_init(|| {
            python()?;
            let tmp = tempfile::tempdir().unwrap();
            let specs = specs();
            let spec_path = tmp.path().join("spec.json");
            std::fs::write(&spec_path, serde_json::to_string(&specs).unwrap()).unwrap();
            run_py(
                "hf_oracle.py",
                &[
                    "make",
                    spec_path.to_str().unwrap(),
                    tmp.path().to_str().unwrap(),
                ],
            )
            .unwrap();
            let tensors = Tensor::read_safetensors(tmp.path().join("oracle.safetensors")).unwrap();
            let meta: Value = serde_json::from_str(
                &std::fs::read_to_string(tmp.path().join("oracle.json")).unwrap(),
            )
            .unwrap();
            Some(Oracle {
                dir: tmp.path().to_path_buf(),
                tensors,
                meta,
                specs,
                _tmp: tmp,
            })
        })
        .as_ref()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shape mismatch");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

pub fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let scale = b
        .to_kind(Kind::Double)
        .abs()
        .max()
        .double_value(&[])
        .max(1e-12);
    max_abs_diff(a, b) / scale
}
