//! Cases, splits, the medical knowledge base, PHI redaction, generators, importers and the scripted expert.
//!
//! - [`cases`]: case IO (JSONL, parquet), validation, `load_cases` (file or folder)
//! - [`wire`]: parquet / JSONL IO of the `Sample` and `Scored` wire formats
//! - [`splits`]: train / validation (by case) and test (by diagnosis) splits
//! - [`generate`]: the synthetic case generator over the disease table
//! - [`shipped`]: the shipped cases, knowledge base and recipes, embedded in the binary (or `$SPAR_DATA`)
//! - [`expert`]: the scripted expert (gold consultations, turn-by-turn doctor policy)
//! - [`verl`]: import of verl-style RL parquet
//! - [`recipe`]: the train / eval cases a recipe's `[data]` section selects (redacted when `redact_on_ingest`)
//! - [`redact`]: PHI redaction of imported cases and RL prompts (`[data] redact_on_ingest`)
pub mod audit;
pub mod cases;
pub mod expert;
pub mod generate;
pub mod import;
pub mod kb;
mod parquet_io;
pub mod recipe;
pub mod redact;
pub mod shipped;
pub mod splits;
pub mod verl;
pub mod wire;

pub use cases::{Format, load_cases, read_cases, write_cases};
pub use expert::Expert;
pub use splits::{Split, Splits, load_split};
pub use wire::{
    read_samples, read_scored, write_samples, write_samples_parquet, write_scored,
    write_scored_parquet,
};
