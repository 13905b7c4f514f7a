//! HF checkpoint IO: sharded save/load and errors that name the file and the tensor.

use crate::common::max_abs_diff;
use spar_model::weights::save_hf_sharded;
use spar_model::{ForwardInput, Qwen3Config, Qwen3Model};
use std::path::Path;
use tch::{Device, Kind, Tensor};

fn tiny() -> Qwen3Model {
    let c = Qwen3Config::from_json_str(
        r#"{"model_type":"qwen3_moe","vocab_size":32,"hidden_size":16,"intermediate_size":24,"num_hidden_layers":2,
            "num_attention_heads":2,"num_key_value_heads":1,"head_dim":8,"num_experts":4,"num_experts_per_tok":2,
            "moe_intermediate_size":8,"decoder_sparse_step":2}"#,
        "test",
    )
    .unwrap();
    Qwen3Model::random(c, Device::Cpu, Kind::Float, 3).unwrap()
}

fn err_of(dir: &Path) -> String {
    match Qwen3Model::load(dir, Device::Cpu, Kind::Float) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn sharded_save_and_load_round_trip() {
    let m = tiny();
    let tmp = tempfile::tempdir().unwrap();
    save_hf_sharded(&m, tmp.path(), 4000).unwrap();
    assert!(tmp.path().join("model.safetensors.index.json").exists());
    assert!(!tmp.path().join("model.safetensors").exists());
    let back = Qwen3Model::load(tmp.path(), Device::Cpu, Kind::Float).unwrap();
    let x = Tensor::from_slice(&[1i64, 2, 3, 4, 5]).view([1, 5]);
    let a = tch::no_grad(|| m.forward(ForwardInput::new(&x)).unwrap().logits);
    let b = tch::no_grad(|| back.forward(ForwardInput::new(&x)).unwrap().logits);
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    // Saving again unsharded removes the stale shards and index.
    m.save_hf(tmp.path()).unwrap();
    assert!(!tmp.path().join("model.safetensors.index.json").exists());
    Qwen3Model::load(tmp.path(), Device::Cpu, Kind::Float).unwrap();
    // bf16 load of an fp32 checkpoint
    let b16 = Qwen3Model::load(tmp.path(), Device::Cpu, Kind::BFloat16).unwrap();
    assert_eq!(b16.embed_weight().kind(), Kind::BFloat16);
}

/// Rewrites model.safetensors of `dir` with `edit` applied to its tensor list.
fn rewrite(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) {
    let p = dir.join("model.safetensors");
    let mut t = Tensor::read_safetensors(&p).unwrap();
    edit(&mut t);
    Tensor::write_safetensors(&t, &p).unwrap();
}

/// NaN weights are refused at load naming the tensor; NaN logits at generation are an error, not "!!!!".
#[test]
fn non_finite_weights_are_refused_at_load_and_nan_logits_at_generation() {
    let m = tiny();
    let tmp = tempfile::tempdir().unwrap();
    m.save_hf(tmp.path()).unwrap();
    rewrite(tmp.path(), |t| {
        let (_, w) = t
            .iter_mut()
            .find(|(n, _)| n == "model.norm.weight")
            .unwrap();
        let _ = w.get(3).fill_(f64::NAN);
    });
    let e = err_of(tmp.path());
    assert!(
        e.contains("model.safetensors: tensor `model.norm.weight` holds 1 non-finite values"),
        "{e}"
    );

    let m = tiny();
    tch::no_grad(|| {
        for (name, mut v) in m.vs.variables() {
            if name.contains("norm") {
                let _ = v.fill_(f64::NAN);
            }
        }
    });
    let params = spar_model::generate::SamplingParams {
        max_new_tokens: 4,
        ..Default::default()
    };
    let e = spar_model::generate::generate(&m, &[1, 2, 3], &params)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("logits are not finite (NaN) at generated token 1"),
        "{e}"
    );
}

/// A header length past the end of the file, up to u64::MAX, is a truncated file, not an arithmetic overflow.
#[test]
fn a_huge_header_length_is_a_truncated_file() {
    let m = tiny();
    let tmp = tempfile::tempdir().unwrap();
    m.save_hf(tmp.path()).unwrap();
    for n in [u64::MAX, u64::MAX - 7, 1 << 40] {
        let mut bytes = n.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        std::fs::write(tmp.path().join("model.safetensors"), &bytes).unwrap();
        let e = err_of(tmp.path());
        assert!(
            e.contains("model.safetensors: truncated file (header of"),
            "{e}"
        );
    }
}

#[test]
fn bad_checkpoints_name_file_and_tensor() {
    let m = tiny();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();

    m.save_hf(d).unwrap();
    rewrite(d, |t| {
        t.retain(|(n, _)| n != "model.layers.1.mlp.experts.2.up_proj.weight")
    });
    let e = err_of(d);
    assert!(
        e.contains("missing tensor `model.layers.1.mlp.experts.2.up_proj.weight`")
            && e.contains("model.safetensors"),
        "{e}"
    );

    m.save_hf(d).unwrap();
    rewrite(d, |t| {
        for (n, v) in t.iter_mut() {
            if n == "model.layers.0.self_attn.k_proj.weight" {
                *v = Tensor::zeros([4, 16], (Kind::Float, Device::Cpu));
            }
        }
    });
    let e = err_of(d);
    assert!(
        e.contains("model.layers.0.self_attn.k_proj.weight")
            && e.contains("shape [4, 16]")
            && e.contains("model.safetensors"),
        "{e}"
    );

    m.save_hf(d).unwrap();
    rewrite(d, |t| {
        for (n, v) in t.iter_mut() {
            if n == "model.norm.weight" {
                *v = Tensor::zeros([16], (Kind::Int64, Device::Cpu));
            }
        }
    });
    let e = err_of(d);
    assert!(
        e.contains("model.norm.weight")
            && e.contains("dtype I64")
            && e.contains("model.safetensors"),
        "{e}"
    );

    m.save_hf(d).unwrap();
    let p = d.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
    let e = err_of(d);
    assert!(
        e.contains("truncated") && e.contains("model.safetensors") && e.contains('`'),
        "{e}"
    );

    m.save_hf(d).unwrap();
    rewrite(d, |t| {
        t.push((
            "model.layers.0.mlp.shared_expert.weight".into(),
            Tensor::zeros([2], (Kind::Float, Device::Cpu)),
        ))
    });
    let e = err_of(d);
    assert!(
        e.contains("unexpected tensor `model.layers.0.mlp.shared_expert.weight`"),
        "{e}"
    );

    // Sharded: the index names a shard that lacks the tensor.
    save_hf_sharded(&m, d, 4000).unwrap();
    let idx = d.join("model.safetensors.index.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&idx).unwrap()).unwrap();
    let first = v["weight_map"]["model.embed_tokens.weight"]
        .as_str()
        .unwrap()
        .to_string();
    let other = v["weight_map"]["model.norm.weight"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(first, other);
    v["weight_map"]["model.norm.weight"] = serde_json::json!(first.clone());
    std::fs::write(&idx, v.to_string()).unwrap();
    let e = err_of(d);
    assert!(
        e.contains(&first) && e.contains("missing tensor `model.norm.weight`"),
        "{e}"
    );

    std::fs::write(d.join("config.json"), r#"{"model_type":"qwen3","vocab_size":32,"hidden_size":16,"intermediate_size":24,"num_hidden_layers":2,"num_attention_heads":2,"flash_mode":true}"#).unwrap();
    let e = err_of(d);
    assert!(e.contains("flash_mode") && e.contains("config.json"), "{e}");
}
