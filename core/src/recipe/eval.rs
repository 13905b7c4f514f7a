//! `[eval]`: `spar eval`. Owner: eval.
//!
//! The evaluation simulator, judge and fact checker are configured here, apart from the training ones
//! (method.md section 9, "Evaluation hygiene"): an `[eval]` section that leaves them out gets the built-in
//! offline ones, never the training endpoints by accident.
use super::check;
use super::{EndpointConfig, FactConfig};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

recipe_enum! {
    /// Where HealthBench's [0, 1] clip applies (default: as HealthBench).
    #[derive(Default)]
    pub enum HealthBenchClip {
        /// Clip the mean over examples, as HealthBench (simple-evals) does.
        #[default]
        Mean = "mean",
        /// Clip each example's score before averaging.
        Example = "example",
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalSection {
    /// The split evaluated. The test split holds out whole diagnoses; the CPU demo reports on
    /// validation (a tiny model cannot name a diagnosis it never saw).
    pub split: super::Split,
    /// Evaluate at most this many cases (0 = all).
    pub max_cases: usize,
    /// Episodes per case.
    pub samples_per_case: usize,
    /// Consultations (and HealthBench examples) played at once.
    pub concurrency: usize,
    /// Policy as an OpenAI-compatible endpoint instead of the local model.
    pub policy_endpoint: Option<EndpointConfig>,
    /// Evaluation simulator and judge are configured apart from the training ones (method.md section 9).
    pub simulator: Option<super::SimulatorConfig>,
    pub judge: Option<super::JudgeConfig>,
    /// Claim extractor and fact verifier for the hallucination rate H (None: rule extractor + knowledge base).
    pub facts: Option<FactConfig>,
    /// Measure the hallucination rate of consultations.
    pub hallucination: bool,
    /// HealthBench JSONL to run (conversation + rubrics), if any.
    pub healthbench: Option<PathBuf>,
    /// Where HealthBench's [0, 1] clip applies.
    pub healthbench_clip: HealthBenchClip,
    /// Bootstrap resamples for score standard deviations (0 = none).
    pub bootstrap: usize,
    /// Seed of the bootstrap and of sampled generation.
    pub seed: u64,
    pub temperature: f32,
    pub max_new_tokens: u32,
    /// Phrases that count as escalation in the red-flag assessment (empty: the built-in list).
    pub escalation_terms: Vec<String>,
    /// `spar train` only: a second held-out evaluation after SFT and after RL with sampled consultations.
    pub sampled: Option<SampledEvalSection>,
}

/// `[eval.sampled]`: the held-out cases played several times a case at a sampling temperature after SFT and after
/// RL (verl's `val_kwargs` with `n` > 1). RL trains the sampled policy; its expected score moves smoothly with
/// the weights, where a greedy evaluation moves only when a reply's argmax flips.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SampledEvalSection {
    /// Consultations a case.
    pub samples_per_case: usize,
    /// Sampling temperature (absent: the rollout's, `[rollout.sampling] temperature`, the policy RL trains).
    pub temperature: Option<f32>,
    /// Consultations in the engine's batch (absent: `[rollout] max_batch`). With `[rollout] batch_invariant`
    /// the scores do not depend on it.
    pub concurrency: Option<usize>,
}

impl Default for SampledEvalSection {
    fn default() -> Self {
        SampledEvalSection {
            samples_per_case: 4,
            temperature: None,
            concurrency: None,
        }
    }
}

impl SampledEvalSection {
    pub fn validate(&self) -> Result<(), (String, String)> {
        check(
            self.samples_per_case >= 1,
            "samples_per_case",
            "must be >= 1",
        )?;
        if let Some(t) = self.temperature {
            check(
                t > 0.0,
                "temperature",
                "must be > 0 (the greedy evaluation is [eval] itself)",
            )?;
        }
        if let Some(c) = self.concurrency {
            check(c >= 1, "concurrency", "must be >= 1")?;
        }
        Ok(())
    }
}

impl Default for EvalSection {
    fn default() -> Self {
        EvalSection {
            split: super::Split::Validation,
            max_cases: 0,
            samples_per_case: 1,
            concurrency: 8,
            policy_endpoint: None,
            simulator: None,
            judge: None,
            facts: None,
            hallucination: true,
            healthbench: None,
            healthbench_clip: HealthBenchClip::Mean,
            bootstrap: 1000,
            seed: 0,
            temperature: 0.0,
            max_new_tokens: 256,
            escalation_terms: Vec::new(),
            sampled: None,
        }
    }
}

impl EvalSection {
    pub fn validate(&self) -> Result<(), (String, String)> {
        check(
            self.samples_per_case >= 1,
            "samples_per_case",
            "must be >= 1",
        )?;
        check(self.concurrency >= 1, "concurrency", "must be >= 1")?;
        check(self.temperature >= 0.0, "temperature", "must be >= 0")?;
        check(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1")?;
        if let Some(e) = &self.policy_endpoint {
            e.validate()
                .map_err(|(k, m)| (format!("policy_endpoint.{k}"), m))?;
        }
        if let Some(s) = &self.simulator {
            s.validate()
                .map_err(|(k, m)| (format!("simulator.{k}"), m))?;
            check(
                s.kind != super::SimulatorKind::SelfPlay,
                "simulator.kind",
                "must be scripted or llm: the policy cannot play its own evaluation patient",
            )?;
        }
        if let Some(j) = &self.judge {
            j.validate().map_err(|(k, m)| (format!("judge.{k}"), m))?;
        }
        if let Some(f) = &self.facts {
            f.validate().map_err(|(k, m)| (format!("facts.{k}"), m))?;
        }
        if let Some(s) = &self.sampled {
            s.validate().map_err(|(k, m)| (format!("sampled.{k}"), m))?;
        }
        Ok(())
    }
}
