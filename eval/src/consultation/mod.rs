//! SCAN-bench-like consultation evaluation: each case is played out with the evaluation simulator (history taking,
//! then the DDX, Lab and Diag stage instructions), each stage is scored by the stage scorers, red-flag handling is
//! assessed, and the doctor's claims are fact-checked. Results are summarised overall, per department, per
//! seen / unseen diagnosis and per acuity.
mod episode;
mod summary;

pub use episode::{evaluate_consultations, run_episode};
pub use summary::{ConsultationSummary, GroupSummary, StageMeans, summarize};

use crate::facts::FactChecker;
use crate::safety::EpisodeSafety;
use serde::{Deserialize, Serialize};
use spar_core::Stage;
use spar_core::recipe::RolloutSection;
use spar_core::sample::Turn;
use spar_core::traits::{PatientSimulator, StageScore, StageScorer};
use std::collections::{BTreeMap, BTreeSet};

/// How consultations are run and assessed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConsultationConfig {
    /// Turn limits of Inquiry, DDX, Lab and Diag (method.md section 9: 12, 2, 2, 2).
    pub turn_limits: [u32; 4],
    /// Consultations per case (more than one only makes sense with sampling temperature > 0).
    pub samples_per_case: usize,
    /// Cases played at once.
    pub concurrency: usize,
    pub system_prompt: String,
    /// The user turn that opens each stage after Inquiry (index = stage index; Inquiry's is unused).
    pub instructions: [String; 4],
    /// Phrases that count as escalation for the red-flag assessment.
    pub escalation_terms: Vec<String>,
}

impl Default for ConsultationConfig {
    fn default() -> Self {
        ConsultationConfig {
            turn_limits: [12, 2, 2, 2],
            samples_per_case: 1,
            concurrency: 8,
            system_prompt: spar_core::recipe::DEFAULT_SYSTEM_PROMPT.into(),
            instructions: Stage::ALL.map(|s| {
                if s == Stage::Inquiry {
                    String::new()
                } else {
                    s.default_instruction().to_string()
                }
            }),
            escalation_terms: crate::safety::default_escalation_terms(),
        }
    }
}

impl ConsultationConfig {
    /// The protocol training used: system prompt, stage instructions and turn limits of `[rollout]`.
    pub fn from_rollout(rollout: &RolloutSection) -> Self {
        ConsultationConfig {
            turn_limits: rollout.turn_limits,
            system_prompt: rollout.system_prompt.clone(),
            instructions: Stage::ALL.map(|s| rollout.instruction(s)),
            ..Default::default()
        }
    }
}

/// The models that play and judge the consultation (the evaluation ones, configured apart from training).
pub struct EvalEnv<'a> {
    pub simulator: &'a dyn PatientSimulator,
    pub scorer: &'a dyn StageScorer,
    /// Scorer name for the report (the trait has no id).
    pub scorer_id: String,
    /// Fact checking for the hallucination rate; None skips it.
    pub facts: Option<&'a FactChecker<'a>>,
    /// Normalised ICD-10 codes of the training split's diagnoses; None when unknown (no seen / unseen split).
    pub seen_diagnoses: Option<&'a BTreeSet<String>>,
}

/// How a consultation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EpisodeEnd {
    /// The doctor said it was ready and every stage was reached.
    Done,
    /// History taking hit its turn limit; the later stages were still played.
    InquiryLimit,
    /// The simulated patient ended history taking; the later stages were still played.
    PatientEnded,
    /// The doctor gave its final diagnosis before the Diag stage, which ends the consultation (as in training);
    /// the stages not reached score 0, the diagnosis is scored.
    DiagnosedEarly,
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
