//! `config.json` of a Qwen3 / Qwen3-MoE model directory, in the key conventions of transformers 4.x (as on the
//! hub: `rope_theta`, `rope_scaling`, `num_experts`, `torch_dtype`) and 5.x (`rope_parameters`,
//! `num_local_experts`, `dtype`, `layer_types`).
//!
//! Every field that changes the math is parsed and validated; a field this crate does not know is an error
//! naming it, so a model that silently computes something else (sliding windows, attention biases, quantised
//! weights, unsupported RoPE variants) is refused instead of loaded wrongly.

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Map, Value, json};
use std::path::Path;

/// Which architecture a config describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelType {
    /// `qwen3`: dense decoder.
    Qwen3,
    /// `qwen3_moe`: sparse mixture-of-experts decoder.
    Qwen3Moe,
}

impl ModelType {
    /// The `model_type` string of config.json.
    pub fn as_str(&self) -> &'static str {
        match self {
            ModelType::Qwen3 => "qwen3",
            ModelType::Qwen3Moe => "qwen3_moe",
        }
    }
}

/// A RoPE scaling variant (transformers' `rope_scaling` / `rope_parameters.rope_type`).
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// `linear`: all inverse frequencies divided by `factor`.
    Linear { factor: f64 },
    /// `yarn` (Qwen3's long-context setting), as transformers' `_compute_yarn_parameters`.
    Yarn {
        factor: f64,
        original_max_position_embeddings: usize,
        attention_factor: Option<f64>,
        beta_fast: f64,
        beta_slow: f64,
        mscale: Option<f64>,
        mscale_all_dim: Option<f64>,
        truncate: bool,
    },
    /// `llama3`: frequency-band dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// Every config.json field that changes what a Qwen3 / Qwen3-MoE model computes.
#[derive(Clone, Debug, PartialEq)]
pub struct Qwen3Config {
    pub model_type: ModelType,
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// Dense MLP width (every layer of `qwen3`, the non-MoE layers of `qwen3_moe`).
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    pub max_position_embeddings: usize,
    /// 0 for dense models.
    pub num_experts: usize,
    pub num_experts_per_tok: usize,
    pub moe_intermediate_size: usize,
    pub norm_topk_prob: bool,
    pub decoder_sparse_step: usize,
    pub mlp_only_layers: Vec<usize>,
    pub router_aux_loss_coef: f64,
    pub bos_token_id: Option<u32>,
    /// One or several end-of-sequence ids (config.json allows an int or a list).
    pub eos_token_id: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// `torch_dtype` / `dtype` as written in the file ("bfloat16", "float32", ...), kept for export.
    pub torch_dtype: Option<String>,
}

/// Keys that never change the math (bookkeeping of transformers' PretrainedConfig and generation defaults).
const IGNORED_KEYS: &[&str] = &[
    "architectures",
    "initializer_range",
    "use_cache",
    "transformers_version",
    "output_router_logits",
    "max_window_layers",
    "_name_or_path",
    "name_or_path",
    "auto_map",
    "id2label",
    "label2id",
    "return_dict",
    "output_hidden_states",
    "output_attentions",
    "torchscript",
    "tokenizer_class",
    "problem_type",
    "is_encoder_decoder",
    "chunk_size_feed_forward",
    "pruned_heads",
    "tie_encoder_decoder",
    "finetuning_task",
    "task_specific_params",
    "prefix",
    "sep_token_id",
    "decoder_start_token_id",
    "_attn_implementation_autoset",
    "pretraining_tp",
];

impl Qwen3Config {
    /// Attention's `(query heads, KV heads, head dim)` as tensor sizes.
    pub fn attention_dims(&self) -> (i64, i64, i64) {
        (
            self.num_attention_heads as i64,
            self.num_key_value_heads as i64,
            self.head_dim as i64,
        )
    }

    /// Reads and validates a config.json.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_json_str(&text, &path.display().to_string())
    }

    /// Parses config.json text; `origin` names the file in errors.
    pub fn from_json_str(s: &str, origin: &str) -> Result<Self> {
        let v: Value =
            serde_json::from_str(s).with_context(|| format!("{origin}: not valid JSON"))?;
        Self::from_json_value(&v, origin)
    }

    /// Parses an already-decoded config.json object.
    pub fn from_json_value(v: &Value, origin: &str) -> Result<Self> {
        let obj = v
            .as_object()
            .ok_or_else(|| anyhow!("{origin}: config must be a JSON object"))?;
        let mut r = Reader {
            obj,
            origin,
            used: Vec::new(),
        };
        let model_type = match r.str("model_type")?.as_deref() {
            Some("qwen3") => ModelType::Qwen3,
            Some("qwen3_moe") => ModelType::Qwen3Moe,
            Some(other) => bail!(
                "{origin}: field `model_type`: unsupported model type {other:?} (spar supports \"qwen3\" and \"qwen3_moe\")"
            ),
            None => bail!("{origin}: missing field `model_type`"),
        };
        let moe = model_type == ModelType::Qwen3Moe;
        let vocab_size = r.req_usize("vocab_size")?;
        let hidden_size = r.req_usize("hidden_size")?;
        let intermediate_size = r.req_usize("intermediate_size")?;
        let num_hidden_layers = r.req_usize("num_hidden_layers")?;
        let num_attention_heads = r.req_usize("num_attention_heads")?;
        let num_key_value_heads = r
            .usize("num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        let head_dim = match r.usize("head_dim")? {
            Some(h) => h,
            None => hidden_size / num_attention_heads.max(1),
        };
        let rms_norm_eps = r.f64("rms_norm_eps")?.unwrap_or(1e-6);
        let tie_word_embeddings = r.bool("tie_word_embeddings")?.unwrap_or(false);
        let max_position_embeddings = r.usize("max_position_embeddings")?.unwrap_or(32768);

        // MoE fields: 4.x writes `num_experts`, 5.x `num_local_experts` (attribute_map of Qwen3MoeConfig).
        let n_exp_a = r.usize("num_experts")?;
        let n_exp_b = r.usize("num_local_experts")?;
        if let (Some(a), Some(b)) = (n_exp_a, n_exp_b)
            && a != b
        {
            bail!("{origin}: fields `num_experts` ({a}) and `num_local_experts` ({b}) disagree");
        }
        let num_experts_raw = n_exp_a.or(n_exp_b);
        let num_experts_per_tok = r.usize("num_experts_per_tok")?;
        let moe_intermediate_size = r.usize("moe_intermediate_size")?;
        let norm_topk_prob = r.bool("norm_topk_prob")?;
        let decoder_sparse_step = r.usize("decoder_sparse_step")?;
        let mlp_only_layers = r.usize_list("mlp_only_layers")?;
        let router_aux_loss_coef = r.f64("router_aux_loss_coef")?;
        if !moe {
            for (k, present) in [
                ("num_experts", num_experts_raw.is_some_and(|n| n > 0)),
                ("num_experts_per_tok", num_experts_per_tok.is_some()),
                ("moe_intermediate_size", moe_intermediate_size.is_some()),
                ("decoder_sparse_step", decoder_sparse_step.is_some()),
                (
                    "mlp_only_layers",
                    mlp_only_layers.as_ref().is_some_and(|l| !l.is_empty()),
                ),
            ] {
                if present {
                    bail!(
                        "{origin}: field `{k}` is a MoE field but model_type is \"qwen3\" (use \"qwen3_moe\")"
                    );
                }
            }
        }
        let num_experts = if moe {
            num_experts_raw.unwrap_or(128)
        } else {
            0
        };
        let num_experts_per_tok = if moe {
            num_experts_per_tok.unwrap_or(8)
        } else {
            0
        };
        let moe_intermediate_size = if moe {
            moe_intermediate_size.unwrap_or(768)
        } else {
            0
        };
        let norm_topk_prob = norm_topk_prob.unwrap_or(false);
        let decoder_sparse_step = decoder_sparse_step.unwrap_or(1);
        let mlp_only_layers = mlp_only_layers.unwrap_or_default();
        let router_aux_loss_coef = router_aux_loss_coef.unwrap_or(0.001);

        // Fields that must hold a specific value for the math implemented here.
        if let Some(act) = r.str("hidden_act")?
            && act != "silu"
        {
            bail!("{origin}: field `hidden_act`: unsupported activation {act:?} (only \"silu\")");
        }
        if r.bool("attention_bias")?.unwrap_or(false) {
            bail!(
                "{origin}: field `attention_bias`: true is not supported (Qwen3 has no attention biases)"
            );
        }
        if let Some(p) = r.f64("attention_dropout")?
            && p != 0.0
        {
            bail!("{origin}: field `attention_dropout`: {p} is not supported (only 0)");
        }
        let sliding = r.bool("use_sliding_window")?.unwrap_or(false);
        if sliding {
            bail!(
                "{origin}: field `use_sliding_window`: true is not supported (full attention only)"
            );
        }
        r.mark("sliding_window"); // only read by transformers when use_sliding_window is true
        if let Some(lt) = r.take("layer_types") {
            let arr = lt
                .as_array()
                .ok_or_else(|| anyhow!("{origin}: field `layer_types` must be a list"))?;
            for (i, t) in arr.iter().enumerate() {
                if t.as_str() != Some("full_attention") {
                    bail!(
                        "{origin}: field `layer_types[{i}]`: {t} is not supported (only \"full_attention\")"
                    );
                }
            }
        }
        if r.obj.contains_key("quantization_config") {
            bail!("{origin}: field `quantization_config`: quantised checkpoints are not supported");
        }

        let (rope_theta, rope_scaling) = parse_rope(&mut r, max_position_embeddings)?;

        let bos_token_id = r.opt_u32("bos_token_id")?;
        let pad_token_id = r.opt_u32("pad_token_id")?;
        let eos_token_id =
            match r.take("eos_token_id") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|x| {
                        x.as_u64().map(|n| n as u32).ok_or_else(|| {
                            anyhow!("{origin}: field `eos_token_id`: {x} is not a token id")
                        })
                    })
                    .collect::<Result<_>>()?,
                Some(x) => vec![x.as_u64().ok_or_else(|| {
                    anyhow!("{origin}: field `eos_token_id`: {x} is not a token id")
                })? as u32],
            };
        let dt_a = r.str("torch_dtype")?;
        let dt_b = r.str("dtype")?;
        let torch_dtype = dt_b.or(dt_a);

        for k in IGNORED_KEYS {
            r.mark(k);
        }
        if let Some(k) = obj.keys().find(|k| !r.used.iter().any(|u| u == *k)) {
            bail!(
                "{origin}: unknown field `{k}` in a {} config (spar does not know how it changes the model)",
                model_type.as_str()
            );
        }

        let c = Qwen3Config {
            model_type,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rope_theta,
            rope_scaling,
            rms_norm_eps,
            tie_word_embeddings,
            max_position_embeddings,
            num_experts,
            num_experts_per_tok,
            moe_intermediate_size,
            norm_topk_prob,
            decoder_sparse_step,
            mlp_only_layers,
            router_aux_loss_coef,
            bos_token_id,
            eos_token_id,
            pad_token_id,
            torch_dtype,
        };
        c.validate().with_context(|| origin.to_string())?;
        Ok(c)
    }

    /// Checks the relations between fields (divisibility, ranges).
    pub fn validate(&self) -> Result<()> {
        let nz = |v: usize, f: &str| {
            if v == 0 {
                Err(anyhow!("field `{f}` must be > 0"))
            } else {
                Ok(())
            }
        };
        nz(self.vocab_size, "vocab_size")?;
        nz(self.hidden_size, "hidden_size")?;
        nz(self.num_hidden_layers, "num_hidden_layers")?;
        nz(self.num_attention_heads, "num_attention_heads")?;
        nz(self.num_key_value_heads, "num_key_value_heads")?;
        nz(self.head_dim, "head_dim")?;
        if !self.head_dim.is_multiple_of(2) {
            bail!(
                "field `head_dim` must be even for RoPE, got {}",
                self.head_dim
            );
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            bail!(
                "field `num_key_value_heads` ({}) must divide `num_attention_heads` ({})",
                self.num_key_value_heads,
                self.num_attention_heads
            );
        }
        if self.model_type == ModelType::Qwen3Moe {
            nz(self.num_experts, "num_experts")?;
            nz(self.num_experts_per_tok, "num_experts_per_tok")?;
            nz(self.moe_intermediate_size, "moe_intermediate_size")?;
            nz(self.decoder_sparse_step, "decoder_sparse_step")?;
            if self.num_experts_per_tok > self.num_experts {
                bail!(
                    "field `num_experts_per_tok` ({}) exceeds `num_experts` ({})",
                    self.num_experts_per_tok,
                    self.num_experts
                );
            }
            if let Some(l) = self
                .mlp_only_layers
                .iter()
                .find(|l| **l >= self.num_hidden_layers)
            {
                bail!(
                    "field `mlp_only_layers`: layer {l} >= num_hidden_layers ({})",
                    self.num_hidden_layers
                );
            }
        }
        if self.rms_norm_eps <= 0.0 {
            bail!("field `rms_norm_eps` must be > 0");
        }
        if self.rope_theta <= 0.0 {
            bail!("field `rope_theta` must be > 0");
        }
        Ok(())
    }

    /// Whether decoder layer `layer` uses the sparse MoE block (transformers' rule: not in `mlp_only_layers`,
    /// experts exist, and `(layer + 1) % decoder_sparse_step == 0`).
    pub fn is_moe_layer(&self, layer: usize) -> bool {
        self.model_type == ModelType::Qwen3Moe
            && self.num_experts > 0
            && !self.mlp_only_layers.contains(&layer)
            && (layer + 1).is_multiple_of(self.decoder_sparse_step)
    }

    /// Model FLOPs of training on one token that attends to `mean_context` positions (forward + backward = 3
    /// forwards; recomputation is not counted, as MFU's definition wants): every matmul the token goes through,
    /// the LM head included and the embedding lookup not, the routed experts only (top-k of them), and causal
    /// attention's scores and weighted sum. Over a packed sequence of `s` tokens, a token attends to
    /// `(s + 1) / 2` positions on average.
    pub fn train_flops_per_token(&self, mean_context: f64) -> f64 {
        let (d, h, kv, hd) = (
            self.hidden_size as f64,
            self.num_attention_heads as f64,
            self.num_key_value_heads as f64,
            self.head_dim as f64,
        );
        let attention_proj = d * h * hd * 2.0 + d * kv * hd * 2.0;
        let scores_and_values = 2.0 * h * hd * mean_context;
        let mut forward = 0.0;
        for layer in 0..self.num_hidden_layers {
            let mlp = if self.is_moe_layer(layer) {
                3.0 * d * self.moe_intermediate_size as f64 * self.num_experts_per_tok as f64
                    + d * self.num_experts as f64
            } else {
                3.0 * d * self.intermediate_size as f64
            };
            forward += 2.0 * (attention_proj + mlp + scores_and_values);
        }
        forward += 2.0 * d * self.vocab_size as f64;
        3.0 * forward
    }

    /// Indices of the MoE layers, in order; position `m` in this list is the MoE-layer index used by
    /// `router_logits`, `routed_experts` and `forced_experts`.
    pub fn moe_layers(&self) -> Vec<usize> {
        (0..self.num_hidden_layers)
            .filter(|l| self.is_moe_layer(*l))
            .collect()
    }

    /// The MoE layers among the hidden layers and the experts per token, as an external rollout server's routing
    /// payload is laid out ([`spar_core::routed_wire`]); None for a dense model.
    pub fn moe_layout(&self) -> Option<spar_core::routed_wire::MoeLayout> {
        let moe_layers = self.moe_layers();
        (!moe_layers.is_empty()).then_some(spar_core::routed_wire::MoeLayout {
            num_hidden_layers: self.num_hidden_layers,
            moe_layers,
            top_k: self.num_experts_per_tok,
        })
    }

    /// config.json for export, in transformers 4.x key conventions (`rope_theta`, `rope_scaling`,
    /// `num_experts`, `torch_dtype`): 4.x cannot read 5.x's `rope_parameters` (it would silently fall back to
    /// theta 10000), while 5.x converts 4.x keys on load, so 4.x keys are the form every consumer
    /// (transformers 4/5, vLLM, SGLang) reads correctly.
    pub fn to_hf_json(&self) -> Value {
        let moe = self.model_type == ModelType::Qwen3Moe;
        let mut m = Map::new();
        let arch = if moe {
            "Qwen3MoeForCausalLM"
        } else {
            "Qwen3ForCausalLM"
        };
        m.insert("architectures".into(), json!([arch]));
        m.insert("model_type".into(), json!(self.model_type.as_str()));
        m.insert("vocab_size".into(), json!(self.vocab_size));
        m.insert("hidden_size".into(), json!(self.hidden_size));
        m.insert("intermediate_size".into(), json!(self.intermediate_size));
        m.insert("num_hidden_layers".into(), json!(self.num_hidden_layers));
        m.insert(
            "num_attention_heads".into(),
            json!(self.num_attention_heads),
        );
        m.insert(
            "num_key_value_heads".into(),
            json!(self.num_key_value_heads),
        );
        m.insert("head_dim".into(), json!(self.head_dim));
        m.insert("hidden_act".into(), json!("silu"));
        m.insert("attention_bias".into(), json!(false));
        m.insert("attention_dropout".into(), json!(0.0));
        m.insert("rms_norm_eps".into(), json!(self.rms_norm_eps));
        m.insert("rope_theta".into(), json!(self.rope_theta));
        m.insert(
            "rope_scaling".into(),
            self.rope_scaling
                .as_ref()
                .map(rope_scaling_json)
                .unwrap_or(Value::Null),
        );
        m.insert(
            "max_position_embeddings".into(),
            json!(self.max_position_embeddings),
        );
        m.insert(
            "tie_word_embeddings".into(),
            json!(self.tie_word_embeddings),
        );
        m.insert("use_sliding_window".into(), json!(false));
        m.insert("sliding_window".into(), Value::Null);
        m.insert("use_cache".into(), json!(true));
        m.insert("initializer_range".into(), json!(0.02));
        if moe {
            m.insert("num_experts".into(), json!(self.num_experts));
            m.insert(
                "num_experts_per_tok".into(),
                json!(self.num_experts_per_tok),
            );
            m.insert(
                "moe_intermediate_size".into(),
                json!(self.moe_intermediate_size),
            );
            m.insert("norm_topk_prob".into(), json!(self.norm_topk_prob));
            m.insert(
                "decoder_sparse_step".into(),
                json!(self.decoder_sparse_step),
            );
            m.insert("mlp_only_layers".into(), json!(self.mlp_only_layers));
            m.insert(
                "router_aux_loss_coef".into(),
                json!(self.router_aux_loss_coef),
            );
            m.insert("output_router_logits".into(), json!(false));
        }
        m.insert("bos_token_id".into(), json!(self.bos_token_id));
        m.insert(
            "eos_token_id".into(),
            match self.eos_token_id.as_slice() {
                [] => Value::Null,
                [one] => json!(one),
                many => json!(many),
            },
        );
        m.insert("pad_token_id".into(), json!(self.pad_token_id));
        if let Some(d) = &self.torch_dtype {
            m.insert("torch_dtype".into(), json!(d));
        }
        Value::Object(m)
    }

    /// Parses a random-init config given as a TOML table (the recipe's `[model.init]`), same keys as config.json.
    pub fn from_toml_table(t: &toml::Table, origin: &str) -> Result<Self> {
        let v = serde_json::to_value(t)
            .with_context(|| format!("{origin}: converting TOML to JSON"))?;
        Self::from_json_value(&v, origin)
    }
}

fn rope_scaling_json(s: &RopeScaling) -> Value {
    match s {
        RopeScaling::Linear { factor } => {
            json!({"rope_type": "linear", "type": "linear", "factor": factor})
        }
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            attention_factor,
            beta_fast,
            beta_slow,
            mscale,
            mscale_all_dim,
            truncate,
        } => {
            let mut m = Map::new();
            m.insert("rope_type".into(), json!("yarn"));
            m.insert("type".into(), json!("yarn"));
            m.insert("factor".into(), json!(factor));
            m.insert(
                "original_max_position_embeddings".into(),
                json!(original_max_position_embeddings),
            );
            if let Some(a) = attention_factor {
                m.insert("attention_factor".into(), json!(a));
            }
            m.insert("beta_fast".into(), json!(beta_fast));
            m.insert("beta_slow".into(), json!(beta_slow));
            if let Some(x) = mscale {
                m.insert("mscale".into(), json!(x));
            }
            if let Some(x) = mscale_all_dim {
                m.insert("mscale_all_dim".into(), json!(x));
            }
            if !truncate {
                m.insert("truncate".into(), json!(false));
            }
            Value::Object(m)
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => json!({
            "rope_type": "llama3", "type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor, "original_max_position_embeddings": original_max_position_embeddings
        }),
    }
}

/// RoPE from either convention: 4.x `rope_theta` + `rope_scaling`, 5.x `rope_parameters` (which holds
/// `rope_theta` and `rope_type`). A 5.x dict nested per layer type is accepted only for `full_attention`.
fn parse_rope(r: &mut Reader<'_>, max_pos: usize) -> Result<(f64, Option<RopeScaling>)> {
    let origin = r.origin;
    let top_theta = r.f64("rope_theta")?;
    let scaling = r.take("rope_scaling").filter(|v| !v.is_null());
    let params = r.take("rope_parameters").filter(|v| !v.is_null());
    if let Some(p) = r.f64("partial_rotary_factor")?
        && p != 1.0
    {
        bail!("{origin}: field `partial_rotary_factor`: {p} is not supported (only 1.0)");
    }
    // transformers gives rope_scaling priority over rope_parameters (convert_rope_params_to_dict).
    let (dict, field) = match (scaling, params) {
        (Some(s), _) => (Some(s), "rope_scaling"),
        (None, Some(p)) => (Some(p), "rope_parameters"),
        (None, None) => (None, "rope_scaling"),
    };
    let Some(dict) = dict else {
        return Ok((top_theta.unwrap_or(10000.0), None));
    };
    let mut obj = dict
        .as_object()
        .ok_or_else(|| anyhow!("{origin}: field `{field}` must be an object"))?
        .clone();
    if let Some(inner) = obj.get("full_attention").cloned() {
        if obj.len() != 1 {
            let other = obj
                .keys()
                .find(|k| *k != "full_attention")
                .cloned()
                .unwrap_or_default();
            bail!(
                "{origin}: field `{field}.{other}`: per-layer-type RoPE other than full_attention is not supported"
            );
        }
        obj = inner
            .as_object()
            .ok_or_else(|| anyhow!("{origin}: field `{field}.full_attention` must be an object"))?
            .clone();
    }
    let num = |k: &str| -> Result<Option<f64>> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                anyhow!("{origin}: field `{field}.{k}`: expected a number, got {v}")
            }),
        }
    };
    let theta = num("rope_theta")?.or(top_theta).unwrap_or(10000.0);
    if let Some(p) = num("partial_rotary_factor")?
        && p != 1.0
    {
        bail!("{origin}: field `{field}.partial_rotary_factor`: {p} is not supported (only 1.0)");
    }
    let kind = obj
        .get("rope_type")
        .or_else(|| obj.get("type"))
        .and_then(|v| v.as_str())
        .unwrap_or("default")
        .to_string();
    let known: &[&str] = match kind.as_str() {
        "default" => &[],
        "linear" => &["factor"],
        "yarn" => &[
            "factor",
            "original_max_position_embeddings",
            "attention_factor",
            "beta_fast",
            "beta_slow",
            "mscale",
            "mscale_all_dim",
            "truncate",
        ],
        "llama3" => &[
            "factor",
            "low_freq_factor",
            "high_freq_factor",
            "original_max_position_embeddings",
        ],
        other => bail!(
            "{origin}: field `{field}.rope_type`: {other:?} is not supported (supported: default, linear, yarn, llama3; \
             dynamic and longrope change frequencies with sequence length)"
        ),
    };
    if let Some(k) = obj.keys().find(|k| {
        !["rope_type", "type", "rope_theta", "partial_rotary_factor"].contains(&k.as_str())
            && !known.contains(&k.as_str())
    }) {
        bail!("{origin}: unknown field `{field}.{k}` for rope_type {kind:?}");
    }
    let req = |k: &str| -> Result<f64> {
        num(k)?
            .ok_or_else(|| anyhow!("{origin}: missing field `{field}.{k}` for rope_type {kind:?}"))
    };
    let orig = |num_v: Option<f64>| num_v.map(|x| x as usize).unwrap_or(max_pos);
    let scaling = match kind.as_str() {
        "default" => None,
        "linear" => Some(RopeScaling::Linear {
            factor: req("factor")?,
        }),
        "yarn" => {
            let original_max_position_embeddings = orig(num("original_max_position_embeddings")?);
            let factor = match num("factor")? {
                Some(f) => f,
                None => max_pos as f64 / original_max_position_embeddings as f64,
            };
            let truncate = match obj.get("truncate") {
                None | Some(Value::Null) => true,
                Some(v) => v
                    .as_bool()
                    .ok_or_else(|| anyhow!("{origin}: field `{field}.truncate` must be a bool"))?,
            };
            Some(RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                attention_factor: num("attention_factor")?,
                // transformers: `get("beta_fast") or 32` (a 0 also means the default)
                beta_fast: num("beta_fast")?.filter(|x| *x != 0.0).unwrap_or(32.0),
                beta_slow: num("beta_slow")?.filter(|x| *x != 0.0).unwrap_or(1.0),
                mscale: num("mscale")?,
                mscale_all_dim: num("mscale_all_dim")?,
                truncate,
            })
        }
        "llama3" => Some(RopeScaling::Llama3 {
            factor: req("factor")?,
            low_freq_factor: req("low_freq_factor")?,
            high_freq_factor: req("high_freq_factor")?,
            original_max_position_embeddings: orig(num("original_max_position_embeddings")?),
        }),
        _ => unreachable!("rope kinds filtered above"),
    };
    Ok((theta, scaling))
}

/// Typed access to config.json fields that records which keys were read.
struct Reader<'a> {
    obj: &'a Map<String, Value>,
    origin: &'a str,
    used: Vec<String>,
}

impl Reader<'_> {
    fn mark(&mut self, k: &str) {
        self.used.push(k.to_string());
    }
    fn take(&mut self, k: &str) -> Option<Value> {
        self.mark(k);
        self.obj.get(k).cloned()
    }
    fn usize(&mut self, k: &str) -> Result<Option<usize>> {
        match self.take(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                anyhow!(
                    "{}: field `{k}`: expected a non-negative integer, got {v}",
                    self.origin
                )
            }),
        }
    }
    fn req_usize(&mut self, k: &str) -> Result<usize> {
        self.usize(k)?
            .ok_or_else(|| anyhow!("{}: missing field `{k}`", self.origin))
    }
    fn opt_u32(&mut self, k: &str) -> Result<Option<u32>> {
        Ok(self.usize(k)?.map(|n| n as u32))
    }
    fn f64(&mut self, k: &str) -> Result<Option<f64>> {
        match self.take(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| anyhow!("{}: field `{k}`: expected a number, got {v}", self.origin)),
        }
    }
    fn bool(&mut self, k: &str) -> Result<Option<bool>> {
        match self.take(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| {
                anyhow!("{}: field `{k}`: expected true/false, got {v}", self.origin)
            }),
        }
    }
    fn str(&mut self, k: &str) -> Result<Option<String>> {
        match self.take(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_str()
                .map(|s| Some(s.to_string()))
                .ok_or_else(|| anyhow!("{}: field `{k}`: expected a string, got {v}", self.origin)),
        }
    }
    fn usize_list(&mut self, k: &str) -> Result<Option<Vec<usize>>> {
        match self.take(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_u64().map(|n| n as usize).ok_or_else(|| {
                        anyhow!("{}: field `{k}`: {x} is not a layer index", self.origin)
                    })
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => Err(anyhow!(
                "{}: field `{k}`: expected a list, got {v}",
                self.origin
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4_MOE: &str = r#"{"architectures":["Qwen3MoeForCausalLM"],"model_type":"qwen3_moe","vocab_size":151936,
      "hidden_size":2048,"intermediate_size":6144,"num_hidden_layers":48,"num_attention_heads":32,"num_key_value_heads":4,
      "head_dim":128,"hidden_act":"silu","rope_theta":1000000.0,"rope_scaling":null,"rms_norm_eps":1e-6,
      "tie_word_embeddings":false,"max_position_embeddings":40960,"num_experts":128,"num_experts_per_tok":8,
      "moe_intermediate_size":768,"norm_topk_prob":true,"decoder_sparse_step":1,"mlp_only_layers":[],
      "router_aux_loss_coef":0.001,"output_router_logits":false,"torch_dtype":"bfloat16","use_sliding_window":false,
      "sliding_window":null,"max_window_layers":48,"attention_bias":false,"attention_dropout":0.0,
      "bos_token_id":151643,"eos_token_id":151645,"initializer_range":0.02,"use_cache":true,"transformers_version":"4.51.0"}"#;

    /// Qwen3-30B-A3B: per layer 18.9M attention MACs (q and o 2048 x 4096, k and v 2048 x 512), 37.7M for the
    /// 8 routed experts of 3 x 2048 x 768 and 0.26M for the router; 48 layers and the 2048 x 151,936 LM head make
    /// 3,041,656,832 active matmul parameters (the model's "3.3B activated" with the embedding), 6 FLOPs each a
    /// trained token; attention adds 6 x 2 x 48 layers x 4096 per position attended.
    #[test]
    fn train_flops_count_the_active_parameters_and_attention() {
        let c = Qwen3Config::from_json_str(V4_MOE, "v4").unwrap();
        assert_eq!(c.train_flops_per_token(0.0), 6.0 * 3_041_656_832.0);
        assert_eq!(
            c.train_flops_per_token(512.0) - c.train_flops_per_token(0.0),
            6.0 * 2.0 * 48.0 * 4096.0 * 512.0
        );
    }

    #[test]
    fn v4_and_v5_conventions_agree() {
        let a = Qwen3Config::from_json_str(V4_MOE, "v4").unwrap();
        let mut v: Value = serde_json::from_str(V4_MOE).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("rope_theta");
        o.remove("rope_scaling");
        o.remove("num_experts");
        o.remove("torch_dtype");
        o.insert(
            "rope_parameters".into(),
            json!({"rope_type": "default", "rope_theta": 1000000.0}),
        );
        o.insert("num_local_experts".into(), json!(128));
        o.insert("dtype".into(), json!("bfloat16"));
        let b = Qwen3Config::from_json_value(&v, "v5").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.rope_theta, 1e6);
        assert_eq!(a.moe_layers().len(), 48);
        let back = Qwen3Config::from_json_value(&a.to_hf_json(), "roundtrip").unwrap();
        assert_eq!(a, back);
    }

    #[test]
    fn unknown_field_is_named() {
        let s = V4_MOE.replace("\"use_cache\":true", "\"use_cache\":true,\"sparse_foo\":3");
        let e = Qwen3Config::from_json_str(&s, "x/config.json")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sparse_foo") && e.contains("x/config.json"),
            "{e}"
        );
        let s = V4_MOE.replace("qwen3_moe", "llama");
        let e = format!("{:#}", Qwen3Config::from_json_str(&s, "c").unwrap_err());
        assert!(e.contains("model_type") && e.contains("llama"), "{e}");
        let s = V4_MOE.replace(
            "\"rope_scaling\":null",
            r#""rope_scaling":{"type":"dynamic","factor":2.0}"#,
        );
        let e = format!("{:#}", Qwen3Config::from_json_str(&s, "c").unwrap_err());
        assert!(
            e.contains("rope_scaling.rope_type") && e.contains("dynamic"),
            "{e}"
        );
        let s = V4_MOE.replace(
            "\"use_sliding_window\":false",
            "\"use_sliding_window\":true",
        );
        assert!(
            format!("{:#}", Qwen3Config::from_json_str(&s, "c").unwrap_err())
                .contains("use_sliding_window")
        );
    }

    #[test]
    fn sparse_step_and_mlp_only_layers() {
        let s = V4_MOE.replace(
            "\"decoder_sparse_step\":1,\"mlp_only_layers\":[]",
            "\"decoder_sparse_step\":2,\"mlp_only_layers\":[3]",
        );
        let c = Qwen3Config::from_json_str(&s, "c").unwrap();
        assert!(!c.is_moe_layer(0) && c.is_moe_layer(1) && !c.is_moe_layer(3) && c.is_moe_layer(5));
    }

    #[test]
    fn yarn_from_both_conventions() {
        let s = V4_MOE.replace(
            "\"rope_scaling\":null",
            r#""rope_scaling":{"rope_type":"yarn","factor":4.0,"original_max_position_embeddings":32768}"#,
        );
        let c = Qwen3Config::from_json_str(&s, "c").unwrap();
        assert!(matches!(
            c.rope_scaling,
            Some(RopeScaling::Yarn {
                factor: 4.0,
                original_max_position_embeddings: 32768,
                ..
            })
        ));
        let back = Qwen3Config::from_json_value(&c.to_hf_json(), "rt").unwrap();
        assert_eq!(c, back);
    }
}
