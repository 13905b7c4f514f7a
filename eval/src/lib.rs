//! spar eval: how good is a doctor policy, and did training make it better?
//!
//! - [`consultation`]: SCAN-bench-like consultations on held-out cases, played as whole episodes through rollout's
//!   environment (`spar_rollout::Rollout`, the protocol training uses) with the evaluation simulator and scored
//!   per stage (inquiry coverage, ranked differential, lab weighted F1, hierarchical ICD-10 diagnosis), with
//!   red-flag safety stratified by acuity and seen / unseen diagnoses reported apart.
//! - [`held_out`]: the held-out evaluation `spar train` runs before, during and after training, on the same
//!   consultation code.
//! - [`healthbench`]: a HealthBench JSONL answered by the policy and graded by a judge, scored as HealthBench does.
//! - [`hallucination`]: the hallucination rate H over the policy's verified claims.
//! - [`report`]: `report.md`, `report.json`, PNG + SVG charts, and before / after comparisons.
//!
//! The policy is an [`EvalPolicy`]: a local checkpoint on the built-in engine, an external token backend, an
//! OpenAI-compatible chat endpoint, or the scripted expert, all played in identical consultations. The caller
//! builds it (and every external model): spar-eval loads no model and builds no HTTP client.
pub mod chart;
pub mod consultation;
pub mod facts;
pub mod hallucination;
pub mod healthbench;
pub mod held_out;
pub mod policy;
mod progress;
pub mod report;
pub mod run;
pub mod safety;

pub use consultation::{ConsultationConfig, EpisodeRecord, EvalEnv, evaluate_consultations};
pub use facts::FactChecker;
pub use healthbench::{HealthBenchConfig, load_healthbench, run_healthbench};
pub use held_out::{EvalSummary, HeldOutEval};
pub use policy::EvalPolicy;
pub use report::{Comparison, EvalReport, EvalSetup, compare};
