//! spar-core: the nouns every other spar crate agrees on, and nothing that needs libtorch.
//!
//! - [`case`]: the patient case schema (what is trained and evaluated on)
//! - [`stage`], [`grammar`]: the four clinical stages and how the doctor tags each stage's output
//! - [`sample`]: the `Sample` / `Scored` wire formats written by rollout and rewards, read by the trainer
//! - [`traits`]: one trait per external model (judge, claim extractor, fact verifier, patient simulator,
//!   encoder, stage scorer, rollout backend, chat backend)
//! - [`recipe`]: the TOML recipe, its sections, `--set` overrides and validation
//! - [`routed_wire`]: MoE expert choices as an external rollout server returns them (SGLang's encoding)
//! - [`phi`]: PHI redaction applied before anything leaves the process or is logged
//! - [`fsio`]: atomic writes and JSONL reading with errors that name file, line and field
pub mod case;
pub mod error;
pub mod eval_summary;
pub mod fsio;
pub mod grammar;
pub mod phi;
pub mod recipe;
pub mod routed_wire;
pub mod sample;
pub mod stage;
pub mod traits;

pub use case::Case;
pub use error::{Error, Result};
pub use eval_summary::{EvalSummary, SampledRows};
pub use sample::{Sample, Scored};
pub use stage::Stage;
