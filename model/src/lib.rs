//! Qwen3 / Qwen3-MoE in tch: HF load/save, forward with KV cache, tokenizer and chat template.
//!
//! The public surface is described in `/work/MODEL_API.md`: [`Qwen3Config`], [`Qwen3Model`] with
//! [`ForwardInput`] / [`ForwardOutput`], the slot [`KvCache`], [`token_logprobs`] and
//! [`aux_load_balancing_loss`].

pub mod cache;
pub mod chat;
pub mod config;
pub mod generate;
pub mod graph_decode;
pub mod moe;
pub mod param_units;
pub mod qwen3;
pub mod rope;
pub mod tokenizer;
pub mod weights;

pub use cache::KvCache;
pub use chat::ChatTemplate;
pub use config::{ModelType, Qwen3Config, RopeScaling};
pub use graph_decode::{GraphDecodeOutput, GraphDecoder, GraphStats, NextTokens};
pub use moe::{aux_load_balancing_loss, aux_load_balancing_loss_masked};
pub use param_units::{ParamUnits, Unit};
pub use qwen3::{
    ForwardInput, ForwardOutput, Qwen3Model, positions_from_seq_ids, token_logprobs,
    try_token_logprobs,
};
pub use tokenizer::{Tokenizer, train_bpe};

/// The tensor kind of the recipe's `model.dtype`.
pub fn dtype_kind(dtype: spar_core::recipe::Dtype) -> tch::Kind {
    match dtype {
        spar_core::recipe::Dtype::Fp32 => tch::Kind::Float,
        spar_core::recipe::Dtype::Bf16 => tch::Kind::BFloat16,
    }
}

/// Parses a command-line `--dtype` ("fp32" | "bf16", also "float32" / "f32" / "bfloat16"); recipes use
/// [`dtype_kind`].
pub fn parse_kind(s: &str) -> anyhow::Result<tch::Kind> {
    match s {
        "fp32" | "float32" | "f32" => Ok(tch::Kind::Float),
        "bf16" | "bfloat16" => Ok(tch::Kind::BFloat16),
        other => anyhow::bail!("unknown dtype {other:?} (expected fp32 or bf16)"),
    }
}

/// Parses a device string: "cpu", "cuda", "cuda:N" or "auto" (CUDA 0 when available, else CPU).
pub fn parse_device(s: &str) -> anyhow::Result<tch::Device> {
    match s {
        "cpu" => Ok(tch::Device::Cpu),
        "cuda" => Ok(tch::Device::Cuda(0)),
        "auto" => Ok(tch::Device::cuda_if_available()),
        other => match other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) => Ok(tch::Device::Cuda(n)),
            None => anyhow::bail!("unknown device {other:?} (expected cpu, cuda, cuda:N or auto)"),
        },
    }
}
