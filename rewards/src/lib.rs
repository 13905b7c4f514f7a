//! spar-rewards: the reward side of spar, exactly as published (Baichuan-M3 sections 3-5), every knob in the
//! recipe's `[rewards]` section, every component's contribution logged per sample. No libtorch: the trainer
//! spreads each step's advantage A_j over that step's tokens (`spar_trainer::batch`), rewards never does.
//!
//! - [`pipeline::RewardPipeline`]: scores one group of samples into `Scored` records (the entry point of
//!   rollout workers, the trainer and `spar score`).
//! - [`advantage`]: every advantage estimator (SPAR Eq. 8, GRPO, GRPO + global penalty, mean-only, RLOO),
//!   the DAPO filter and the M2 length bonus, on plain `f64` slices.
//! - [`rubric`]: Eq. 1, the rule judge, the judge runner with its failure policy, dynamic rubrics.
//! - [`steps`]: the step verifier and its detectors (Eq. 7's violation types).
//! - [`fact`]: claim extraction, two-level claim cache (SQLite / Redis / memory), Eqs. 9-14.
//! - [`stage`]: stage rewards G_k, also the gate scores V_k ([`stage::ClinicalStageScorer`]).
//! - [`score`]: the offline scoring of trajectory files behind `spar score`.
pub mod advantage;
pub mod components;
pub mod dialogue;
pub mod fact;
pub mod kb;
pub mod models;
pub mod pipeline;
pub mod rubric;
pub mod score;
pub mod stage;
pub mod steps;
pub mod text;

pub use advantage::{AdvantageParams, StdKind, estimate};
pub use pipeline::{Injected, PipelineMetrics, RewardPipeline, build_fact_checker};
pub use stage::ClinicalStageScorer;
