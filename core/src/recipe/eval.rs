//! `[eval]`: `spar eval`. Owner: eval.
use super::check;
use super::EndpointConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalSection {
    /// "validation" | "test" | "train".
    pub split: String,
    /// Evaluate at most this many cases (0 = all).
    pub max_cases: usize,
    /// Episodes per case.
    pub samples_per_case: usize,
    /// Policy as an OpenAI-compatible endpoint instead of the local model.
    pub policy_endpoint: Option<EndpointConfig>,
    /// Evaluation simulator and judge are configured apart from the training ones (method.md section 9).
    pub simulator: Option<super::SimulatorConfig>,
    pub judge: Option<super::JudgeConfig>,
    /// HealthBench JSONL to run (conversation + rubrics), if any.
    pub healthbench: Option<PathBuf>,
    pub temperature: f32,
    pub max_new_tokens: u32,
}

impl Default for EvalSection {
    fn default() -> Self {
        EvalSection { split: "validation".into(), max_cases: 0, samples_per_case: 1, policy_endpoint: None, simulator: None, judge: None, healthbench: None, temperature: 0.0, max_new_tokens: 256 }
    }
}

impl EvalSection {
    pub fn validate(&self) -> Result<(), (String, String)> {
        check(["train", "validation", "test"].contains(&self.split.as_str()), "split", "must be train, validation or test")?;
        check(self.samples_per_case >= 1, "samples_per_case", "must be >= 1")
    }
}
