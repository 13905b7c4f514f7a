//! spar eval: how good is a doctor policy, and did training make it better?
//!
//! - [`consultation`]: SCAN-bench-like consultations on held-out cases, played with the evaluation simulator and
//!   scored per stage (inquiry coverage, ranked differential, lab weighted F1, hierarchical ICD-10 diagnosis),
//!   with red-flag safety stratified by acuity and seen / unseen diagnoses reported apart.
//! - [`healthbench`]: a HealthBench JSONL answered by the policy and graded by a judge, scored as HealthBench does.
//! - [`hallucination`]: the hallucination rate H over the policy's verified claims.
//! - [`report`]: `report.md`, `report.json`, PNG + SVG charts, and before / after comparisons.
//!
//! The policy is anything implementing [`ChatPolicy`]: a local checkpoint on the built-in engine or an
//! OpenAI-compatible endpoint, so a trained model and a hosted one are evaluated on identical conversations.
pub mod chart;
pub mod consultation;
pub mod endpoint;
pub mod facts;
pub mod hallucination;
pub mod healthbench;
pub mod local;
pub mod policy;
mod progress;
pub mod report;
pub mod run;
pub mod safety;

pub use consultation::{ConsultationConfig, EpisodeRecord, EvalEnv, evaluate_consultations};
pub use endpoint::EndpointPolicy;
pub use facts::FactChecker;
pub use healthbench::{HealthBenchConfig, load_healthbench, run_healthbench};
pub use local::{BackendPolicy, LocalPolicyConfig, evaluate_local, with_builtin_engine};
pub use policy::{ChatPolicy, ExpertPolicy, PolicyReply};
pub use report::{Comparison, EvalReport, EvalSetup, compare};
