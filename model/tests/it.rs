//! Integration tests of spar-model (one binary; modules under tests/it/).

#[path = "it/checkpoints.rs"]
mod checkpoints;
#[path = "it/common.rs"]
mod common;
#[path = "it/fused_prefill.rs"]
mod fused_prefill;
#[path = "it/graph_decode.rs"]
mod graph_decode;
#[path = "it/graph_prefill.rs"]
mod graph_prefill;
#[path = "it/internal.rs"]
mod internal;
#[path = "it/parity.rs"]
mod parity;
#[path = "it/safetensors_fuzz.rs"]
mod safetensors_fuzz;
#[path = "it/tokenizer.rs"]
mod tokenizer;
