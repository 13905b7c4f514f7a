//! `EvalSummary`: the scores of one held-out evaluation pass, as spar-eval computes them and `spar train` reports
//! them (one row of its table and of `comparison.json`).
use serde::{Deserialize, Serialize};

/// Per-stage scores and reward of one evaluation pass.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalSummary {
    pub episodes: usize,
    pub reward_mean: f64,
    /// G_k means in stage order (inquiry, ddx, lab, diag).
    pub stage_means: [f64; 4],
    pub parsed_rate: f64,
    pub hallucination_rate: f64,
}
