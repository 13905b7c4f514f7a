//! `EvalSummary`: the scores of one held-out evaluation pass, as spar-eval computes them and `spar train` reports
//! them (one row of its table and of `comparison.json`); `SampledRows`: the sampled evaluation's rows there.
use serde::{Deserialize, Serialize};

/// Per-stage scores and reward of one evaluation pass.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalSummary {
    pub episodes: usize,
    pub reward_mean: f64,
    /// G_k means in stage order (inquiry, ddx, lab, diag).
    pub stage_means: [f64; 4],
    pub parsed_rate: f64,
    /// Hallucination weight per extracted claim (refuted 1, unsupported as the recipe weighs it).
    pub hallucination_rate: f64,
    /// Claims extracted per consultation (a policy can lower its hallucination rate by stating fewer claims).
    #[serde(default)]
    pub claims_per_episode: f64,
    /// Share of the doctor's steps with at least one step violation (SPAR's detectors).
    #[serde(default)]
    pub violation_rate: f64,
    /// Per detector type (`repetition`, `redundant_question`, ...: every detector the recipe runs), the share of
    /// the doctor's steps it flagged.
    #[serde(default)]
    pub violation_rates: std::collections::BTreeMap<String, f64>,
}

/// The sampled held-out evaluation's rows (`[eval.sampled]`: every case played several times at the rollout's
/// temperature), as `spar train` writes them under `comparison.json`'s `sampled` and `spar ablate` reads them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SampledRows {
    /// What was played (e.g. "4 samples a case, T = 0.7").
    #[serde(default)]
    pub label: String,
    /// After SFT (None: a run resumed from before the evaluation existed).
    #[serde(default)]
    pub before_rl: Option<EvalSummary>,
    pub after_rl: EvalSummary,
}
