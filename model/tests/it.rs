//! Integration tests of spar-model (one binary; modules under tests/it/).

#[path = "it/common.rs"]
mod common;
#[path = "it/parity.rs"]
mod parity;
#[path = "it/internal.rs"]
mod internal;
#[path = "it/checkpoints.rs"]
mod checkpoints;
#[path = "it/tokenizer.rs"]
mod tokenizer;
