//! Wire formats between rollout, rewards and the trainer (design.md, "Wire formats").
//! JSONL and parquet hold the same fields; every record carries `schema_version`.
use crate::Stage;
use serde::{Deserialize, Serialize};

/// Version of the `Sample` and `Scored` formats; readers reject any other.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    /// The patient (or the stage instruction p_k, which plays the user turn of its step).
    User,
    /// The doctor: the policy being trained.
    Assistant,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    pub role: Role,
    pub text: String,
    /// The stage this turn belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
}

impl Turn {
    pub fn new(role: Role, text: impl Into<String>) -> Self {
        Turn {
            role,
            text: text.into(),
            stage: None,
        }
    }
}

/// How an episode started (method.md section 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EpisodeMode {
    /// Empty history (default 75%).
    Fresh,
    /// Starts from an injected snippet ending in a patient question, visible to the doctor only (25%).
    Interrupted,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    Done,
    MaxTurns,
    /// The last reply hit max new tokens; scored as it stands and flagged.
    Truncated,
    SimulatorEnded,
    SimulatorFailed,
    JudgeFailed,
    GatedOut,
    /// The doctor's generator failed (an endpoint error after the client's retries). Only rollouts that keep
    /// policy failures per episode record it (evaluation); training rounds fail instead.
    PolicyFailed,
}

impl EndReason {
    /// Episodes that leave their group (method.md section 9, "Failures").
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            EndReason::SimulatorFailed | EndReason::JudgeFailed | EndReason::PolicyFailed
        )
    }
}

/// Half-open token range `[start, end)` of one doctor reply's sampled tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepSpan {
    pub stage: Stage,
    pub start: usize,
    pub end: usize,
}

/// Expert choices of an MoE policy for routing replay: `ids[(t * layers + l) * k + j]` is the j-th expert of
/// token t in MoE layer l (dense layers are not counted in `layers`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutedExperts {
    pub layers: usize,
    pub k: usize,
    pub ids: Vec<u16>,
}

/// One member of a group: what `spar rollout` writes and `spar score` reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    pub schema_version: u32,
    pub run_id: String,
    pub case_id: String,
    /// Samples with the same group_id share one baseline: same case, same stage, same pooled prefix.
    pub group_id: String,
    pub sample_idx: u32,
    /// The stages this sample covers (one for a segment, several for a whole episode).
    pub stages: Vec<Stage>,
    pub mode: EpisodeMode,
    pub policy_version: u64,
    pub end_reason: EndReason,
    pub token_ids: Vec<u32>,
    /// 1 exactly on sampled tokens (the sampled `<|im_end|>` included), 0 on prompt / template / patient tokens.
    pub loss_mask: Vec<u8>,
    /// Log-prob of each sampled token under the engine that sampled it (0 where `loss_mask` is 0).
    pub rollout_logprobs: Vec<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routed_experts: Option<RoutedExperts>,
    pub steps: Vec<StepSpan>,
    pub turns: Vec<Turn>,
}

impl Sample {
    /// Checks the internal consistency the trainer relies on; returns the offending field and why.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let t = self.token_ids.len();
        if self.schema_version != SCHEMA_VERSION {
            return Err((
                "schema_version",
                format!(
                    "{} is not the supported version {SCHEMA_VERSION}",
                    self.schema_version
                ),
            ));
        }
        if self.loss_mask.len() != t {
            return Err((
                "loss_mask",
                format!("length {} != token_ids length {t}", self.loss_mask.len()),
            ));
        }
        if self.rollout_logprobs.len() != t {
            return Err((
                "rollout_logprobs",
                format!(
                    "length {} != token_ids length {t}",
                    self.rollout_logprobs.len()
                ),
            ));
        }
        if let Some(b) = self.loss_mask.iter().find(|&&m| m > 1) {
            return Err(("loss_mask", format!("value {b} is not 0 or 1")));
        }
        let mut prev = 0;
        for (i, s) in self.steps.iter().enumerate() {
            if s.start > s.end || s.end > t || s.start < prev {
                return Err((
                    "steps",
                    format!(
                        "step {i} [{}, {}) is out of order or out of range (T = {t})",
                        s.start, s.end
                    ),
                ));
            }
            prev = s.end;
        }
        if let Some(r) = &self.routed_experts
            && r.ids.len() != t * r.layers * r.k
        {
            return Err((
                "routed_experts",
                format!("{} ids != T*layers*k = {}", r.ids.len(), t * r.layers * r.k),
            ));
        }
        Ok(())
    }
}

/// A rubric item's verdict inside `Scored`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ItemVerdict {
    pub criterion: String,
    pub points: i32,
    /// None when the judge failed for this item.
    pub met: Option<bool>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub explanation: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClaimLabel {
    Supported,
    Refuted,
    Uncertain,
}

impl ClaimLabel {
    /// Hallucination weight of the evaluation metric H (Refuted 1.0, Uncertain 0.5, Supported 0).
    pub fn hallucination_weight(self) -> f64 {
        match self {
            ClaimLabel::Supported => 0.0,
            ClaimLabel::Refuted => 1.0,
            ClaimLabel::Uncertain => 0.5,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClaimRecord {
    pub text: String,
    pub label: ClaimLabel,
    /// Saliency w(c) of Eq. 11 (0 for claims folded into a cluster representative).
    pub saliency: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepScore {
    pub violations: Vec<String>,
    pub gamma: f64,
    pub advantage: f64,
}

/// A Sample's rewards and per-step advantages: what `spar score` and the in-loop reward workers write.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scored {
    pub schema_version: u32,
    pub run_id: String,
    pub case_id: String,
    pub group_id: String,
    pub sample_idx: u32,
    #[serde(rename = "R_task")]
    pub r_task: f64,
    pub rubric: Vec<ItemVerdict>,
    /// Stage score G_k of a segment (None for whole-episode scoring).
    #[serde(rename = "G_k", default)]
    pub stage_score: Option<f64>,
    pub claims: Vec<ClaimRecord>,
    #[serde(rename = "R_fact")]
    pub r_fact: f64,
    /// Gate lambda(R_task) of Eq. 13.
    pub lambda: f64,
    /// Final reward R = R_task + lambda * R_fact (SPAR's unpenalized R_global).
    #[serde(rename = "R")]
    pub reward: f64,
    pub steps: Vec<StepScore>,
    #[serde(default)]
    pub drop_reason: Option<String>,
    /// Every reward component's contribution, by name, so that ablations can be analysed from the file alone
    /// (e.g. `fact_term` = lambda * R_fact, `step_penalty_mean`, `length_bonus`, `mu_raw`, `sigma_raw`,
    /// `judge_failures`). Names are documented in `spar_rewards::components`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub components: std::collections::BTreeMap<String, f64>,
}
