//! Qwen3 / Qwen3-MoE in tch: HF load/save, forward with KV cache, tokenizer and chat template.
//!
//! The public surface is described in `/work/MODEL_API.md`: [`Qwen3Config`], [`Qwen3Model`] with
//! [`ForwardInput`] / [`ForwardOutput`], the slot [`KvCache`], [`token_logprobs()`] and
//! [`aux_load_balancing_loss`].

pub mod attention_backend;
pub mod cache;
pub mod chat;
pub mod config;
pub mod expert_parallel;
pub mod fused_layers;
pub mod fused_prefill;
pub mod generate;
pub mod graph_decode;
pub mod graph_prefill;
pub mod hf_ranges;
pub mod moe;
pub mod param_units;
pub mod qwen3;
pub mod rope;
pub mod temperature_sampling;
pub mod token_logprobs;
pub mod tokenizer;
pub mod weights;

pub use cache::KvCache;
pub use chat::ChatTemplate;
pub use config::{ModelType, Qwen3Config, RopeScaling};
pub use expert_parallel::ExpertExchange;
pub use graph_decode::{
    GraphDecodeOutput, GraphDecoder, GraphStats, LaunchedStep, NextTokens, Pick, StepToken,
};
pub use graph_prefill::PrefillGraphStats;
pub use hf_ranges::{HfRanges, read_safetensors_range, read_safetensors_tensor};
pub use moe::{RoutingSums, aux_load_balancing_loss, aux_load_balancing_loss_masked, routing_sums};
pub use param_units::{GradsReady, ParamUnits, Unit};
pub use qwen3::{ForwardInput, ForwardOutput, Qwen3Model, positions_from_seq_ids};
/// CUDA graphs, re-exported for the trainer's graphed micro-steps (`spar_trainer::learner_graphs`).
pub use spar_kernels::cuda_graph;
/// The GPU's memory now (the KV cache is sized from it) and the caching allocator's events (the rollout's time line):
/// re-exported so the rollout needs no kernels dependency.
pub use spar_kernels::cuda_memory::{
    AllocatorEvents, DeviceMemory, allocator_events as cuda_allocator_events,
    empty_cache as cuda_empty_cache, memory_now as cuda_memory_now,
};
pub use spar_kernels::fixed_address;
/// The fused AdamW step, re-exported for the trainer's optimizer.
pub use spar_kernels::optimizer_ops;
/// The torch profiler (Kineto) and its named spans, re-exported for the same reason: the engine and the
/// trainer mark their phases with `torch_profiler::range`.
pub use spar_kernels::torch_profiler;
pub use token_logprobs::{
    LmHead, LogprobOptions, LogprobPath, TokenLogprobs, head_logprobs, token_logprobs,
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

/// Parses a device string: "cpu", "cuda", "cuda:N" or "auto" (CUDA 0 when available, else CPU). A CUDA device
/// that this machine (or this libtorch build) does not have is an error here, with the devices there are,
/// rather than a C++ backtrace from libtorch at the first tensor put on it.
pub fn parse_device(s: &str) -> anyhow::Result<tch::Device> {
    let device = match s {
        "cpu" => tch::Device::Cpu,
        "cuda" => tch::Device::Cuda(0),
        "auto" => tch::Device::cuda_if_available(),
        other => match other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) => tch::Device::Cuda(n),
            None => anyhow::bail!("unknown device {other:?} (expected cpu, cuda, cuda:N or auto)"),
        },
    };
    if let tch::Device::Cuda(n) = device {
        let count = if tch::Cuda::is_available() {
            tch::Cuda::device_count().max(0) as usize
        } else {
            0
        };
        match count {
            0 => anyhow::bail!(
                "device {s:?}: CUDA is not available here (no GPU visible, or libtorch built without CUDA); \
                 use cpu or auto"
            ),
            c if n >= c => anyhow::bail!(
                "device {s:?}: there is no CUDA device {n} (this machine has {c}: cuda:0..cuda:{})",
                c - 1
            ),
            _ => {}
        }
    }
    Ok(device)
}

#[cfg(test)]
mod device_tests {
    #[test]
    fn a_cuda_device_that_is_not_there_is_a_clear_error() {
        assert_eq!(super::parse_device("cpu").unwrap(), tch::Device::Cpu);
        // No machine has 4096 GPUs: refused with the device named, on CPU-only machines too.
        let e = super::parse_device("cuda:4096").unwrap_err().to_string();
        assert!(e.contains("cuda:4096"), "{e}");
        assert!(super::parse_device("gpu").is_err());
    }
}
