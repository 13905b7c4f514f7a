//! One module per subcommand; each owns its `Args` (clap) and `run`.
pub mod ablate;
mod audit;
pub mod bench;
pub mod bench_decode;
pub mod bench_forward;
pub mod bench_grpo;
#[cfg(feature = "bench-judge")]
pub mod bench_judge;
pub mod bench_logprob;
pub mod bench_trace;
pub mod bench_train;
pub mod common;
pub mod data;
pub mod eval;
pub mod export;
pub mod factcheck;
pub mod generate;
pub mod launch;
pub mod logprobs;
pub mod plot;
pub mod redact;
pub mod review;
pub mod rollout;
pub mod score;
pub mod serve;
pub mod sft;
pub mod train;
