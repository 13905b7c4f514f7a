//! spar-ablate: `spar ablate SPEC.toml`, reward-design ablations over seeds (no libtorch).
//!
//! - [`spec`]: the spec (base recipe, `[shared] set`, named `[[arm]]`s of `--set` overrides, seeds, baseline,
//!   where SFT comes from)
//! - [`runner`]: the plan (one run folder per arm and seed; one shared SFT run per seed) and the child processes
//!   (`jobs` at once, threads per child, resumable, failures reported)
//! - [`aggregate`]: `comparison.json` + `metrics.jsonl` of every run -> per-metric table (mean, bootstrap CI,
//!   paired difference to the baseline, sign-flip test) and curves; `ablation.md` / `ablation.json`
//! - [`stats`]: bootstrap CI, exact sign-flip permutation test
//! - [`plots`]: mean and CI bands per arm, PNG + SVG
pub mod aggregate;
pub mod plots;
pub mod runner;
pub mod spec;
pub mod stats;

pub use spec::Spec;
