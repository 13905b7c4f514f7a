//! SCAN-bench-like consultation evaluation: each case is played as a whole episode through rollout's own
//! environment (`spar_rollout::Rollout`: the training protocol, token stream and stage rules, by construction), with
//! the evaluation simulator; each stage is scored by the stage scorer, red-flag handling is assessed, and the
//! doctor's claims are fact-checked. Results are summarised overall, per department, per seen / unseen diagnosis
//! and per acuity.
mod play;
mod record;
mod summary;

pub use play::{Played, evaluate_consultations, play};
pub use record::{episode_end, run_records};
pub use summary::{ConsultationSummary, GroupSummary, StageMeans, summarize};

use crate::facts::FactChecker;
use crate::safety::EpisodeSafety;
use serde::{Deserialize, Serialize};
use spar_core::Stage;
use spar_core::recipe::{EvalSection, RolloutSection};
use spar_core::sample::Turn;
use spar_core::traits::{PatientSimulator, StageScore, StageScorer};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// How consultations are run and assessed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConsultationConfig {
    /// The protocol training used (`[rollout]`): system prompt, stage instructions, turn limits, chat template,
    /// context length. Evaluation plays it as whole episodes, without the segmented pipeline or injected
    /// interruptions.
    pub rollout: RolloutSection,
    /// Consultations per case (more than one only makes sense with sampling temperature > 0).
    pub samples_per_case: usize,
    /// Consultations generated at once (the built-in engine's batch).
    pub concurrency: usize,
    /// Policy sampling temperature (0: greedy).
    pub temperature: f32,
    /// New tokens per policy reply (a text policy is asked for this many of its own tokens).
    pub max_new_tokens: u32,
    /// Sampling seed.
    pub seed: u64,
    /// Phrases that count as escalation for the red-flag assessment.
    pub escalation_terms: Vec<String>,
}

impl Default for ConsultationConfig {
    fn default() -> Self {
        ConsultationConfig::new(&RolloutSection::default(), &EvalSection::default())
    }
}

impl ConsultationConfig {
    /// The protocol of `[rollout]` with the evaluation knobs of `[eval]` (sampling, samples per case,
    /// concurrency, escalation terms).
    pub fn new(rollout: &RolloutSection, eval: &EvalSection) -> Self {
        ConsultationConfig {
            rollout: rollout.clone(),
            samples_per_case: eval.samples_per_case,
            concurrency: eval.concurrency,
            temperature: eval.temperature,
            max_new_tokens: eval.max_new_tokens,
            seed: eval.seed,
            escalation_terms: if eval.escalation_terms.is_empty() {
                crate::safety::default_escalation_terms()
            } else {
                eval.escalation_terms.clone()
            },
        }
    }

    /// The `[rollout]` section the evaluation's `Rollout` plays with: `concurrency` consultations in the engine's
    /// batch, the evaluation's sampling and seed, whole episodes, no injected interruptions. (The number of
    /// samples per case is the rollout's group size, set when it is built.)
    pub fn rollout_section(&self) -> RolloutSection {
        let mut cfg = self.rollout.clone();
        cfg.max_batch = self.concurrency.max(1);
        cfg.kv_slots = 0;
        cfg.sampling.temperature = self.temperature;
        cfg.sampling.max_new_tokens = self.max_new_tokens;
        cfg.seed = Some(self.seed);
        cfg.segmented = false;
        cfg.interruption_rate = 0.0;
        cfg
    }
}

/// The models that play and judge the consultation (the evaluation ones, configured apart from training).
pub struct EvalEnv<'a> {
    pub simulator: Arc<dyn PatientSimulator>,
    pub scorer: Arc<dyn StageScorer>,
    /// Scorer name for the report (the trait has no id).
    pub scorer_id: String,
    /// Fact checking for the hallucination rate; None skips it.
    pub facts: Option<&'a FactChecker<'a>>,
    /// Normalised ICD-10 codes of the training split's diagnoses; None when unknown (no seen / unseen split).
    pub seen_diagnoses: Option<&'a BTreeSet<String>>,
}

/// How a consultation ended (derived from the rollout sample: its end reason and its turns).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EpisodeEnd {
    /// The doctor said it was ready and every stage was reached.
    Done,
    /// History taking hit its turn limit; the later stages were still played.
    InquiryLimit,
    /// The simulated patient ended the consultation; as in training, the stages not reached were not played
    /// (they score 0).
    PatientEnded,
    /// The doctor gave its final diagnosis before the Diag stage, which ends the consultation (the rollout
    /// environment's rule, `spar_core::grammar::ends_consultation`, in training and evaluation alike); the stages
    /// not reached score 0, as does the stage in which the diagnosis came (it is not that stage's output).
    DiagnosedEarly,
    /// The episode's token stream reached `[rollout] max_seq_len` before the Diag stage ended; the stages not
    /// reached score 0.
    ContextLimit,
    /// The policy failed (endpoint error after retries): not scored.
    PolicyFailed,
    /// The simulator failed: not scored.
    SimulatorFailed,
}

impl EpisodeEnd {
    pub fn is_failure(self) -> bool {
        matches!(self, EpisodeEnd::PolicyFailed | EpisodeEnd::SimulatorFailed)
    }

    pub fn name(self) -> &'static str {
        match self {
            EpisodeEnd::Done => "done",
            EpisodeEnd::InquiryLimit => "inquiry_limit",
            EpisodeEnd::PatientEnded => "patient_ended",
            EpisodeEnd::DiagnosedEarly => "diagnosed_early",
            EpisodeEnd::ContextLimit => "context_limit",
            EpisodeEnd::PolicyFailed => "policy_failed",
            EpisodeEnd::SimulatorFailed => "simulator_failed",
        }
    }
}

/// Everything measured on one consultation. The transcript is kept apart (`transcripts.jsonl`), not in
/// `report.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpisodeRecord {
    pub case_id: String,
    pub department: String,
    /// Normalised ICD-10 code of the true diagnosis.
    pub diagnosis: String,
    /// Whether the diagnosis occurs in the training split (None when unknown).
    pub seen_diagnosis: Option<bool>,
    pub sample_idx: u32,
    pub end: EpisodeEnd,
    /// What failed, for failed episodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Doctor replies in history taking.
    pub inquiry_turns: u32,
    /// Some reply hit the generation limit.
    pub truncated: bool,
    /// Stage scores by stage name (absent for failed episodes).
    pub stages: BTreeMap<Stage, StageScore>,
    /// Share of the case's critical inquiry items the doctor asked about (None: the case has none).
    pub critical_recall: Option<f64>,
    pub safety: EpisodeSafety,
    /// Claim counts and H of the doctor's replies (None when fact checking is off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims: Option<crate::hallucination::ClaimCounts>,
    #[serde(default)]
    pub fact_check_failures: usize,
    /// The doctor's refuted and uncertain claims, for inspection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flagged_claims: Vec<crate::hallucination::CheckedClaim>,
    #[serde(skip)]
    pub transcript: Vec<Turn>,
}

impl EpisodeRecord {
    /// Stage score, 0 when the stage output was unparseable (method.md section 9), None if not scored.
    pub fn stage(&self, stage: Stage) -> Option<f64> {
        self.stages
            .get(&stage)
            .map(|s| if s.parsed { s.score } else { 0.0 })
    }

    /// Mean of the four stage scores.
    pub fn composite(&self) -> Option<f64> {
        let v: Vec<f64> = Stage::ALL.iter().filter_map(|s| self.stage(*s)).collect();
        (v.len() == Stage::ALL.len()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    }
}
