//! spar-app: the one wiring layer. Every `spar` command turns its recipe into the run's parts here, and only
//! here, so one recipe means the same thing to `train`, `rollout`, `score`, `eval` and `serve`:
//!
//! - [`Builder`]: the recipe (after `--set` and the common flags) -> device and dtype, tokenizer and policy,
//!   cases and splits, knowledge base, reward pipeline with its injected external models, patient simulator,
//!   rollout backend, the held-out evaluator and the training run's parts.
//! - [`external`]: the external models a recipe names over an OpenAI-compatible endpoint (judge, claim
//!   extractor, fact verifier, encoder, patient simulator, rollout backend), built from `spar-clients`. The
//!   libraries receive them as trait objects: `spar-rewards` builds no HTTP client, `spar-eval` loads no model.
//! - [`CaseSet`]: the cases a recipe's `[data]` section names, split for training, RL and evaluation.
//!
//! Dependency direction (docs/architecture.md): this crate sits above every library and below the binary.
mod builder;
mod cases;
pub mod external;
mod held_out;
mod policy;

pub use builder::{Builder, CLAIM_CACHE_FILE, offline_step, whole_episodes};
pub use cases::CaseSet;
pub use policy::{PolicyParts, check_vocabulary, device_and_kind};
