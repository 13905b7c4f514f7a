//! One trait per external model. Each has a built-in offline implementation (deterministic; tests and the CPU
//! demo) and an OpenAI-compatible one in `spar-clients`. Recipes choose the implementation by name.
use crate::case::{Case, RubricItem};
use crate::sample::{ClaimLabel, RoutedExperts, Turn};
use crate::{Result, Stage};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// What a rubric judge is asked: does `response` (within `conversation`) meet `item`?
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JudgeRequest {
    pub conversation: Vec<Turn>,
    pub response: String,
    pub item: RubricItem,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JudgeVerdict {
    pub met: bool,
    #[serde(default)]
    pub explanation: String,
}

#[async_trait]
pub trait Judge: Send + Sync {
    /// Identifies model + prompt template (cache keys, audit).
    fn id(&self) -> String;
    async fn judge(&self, req: &JudgeRequest) -> Result<JudgeVerdict>;
}

/// Splits a response into atomic, context-free, deduplicated medical claims.
#[async_trait]
pub trait ClaimExtractor: Send + Sync {
    fn id(&self) -> String;
    async fn extract(&self, response: &str, context: &[Turn]) -> Result<Vec<String>>;
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClaimVerdict {
    pub label: ClaimLabel,
    #[serde(default)]
    pub evidence: String,
    /// Where the verdict came from (knowledge-base fact id and source, or the verifier model).
    #[serde(default)]
    pub source: Option<String>,
}

#[async_trait]
pub trait FactVerifier: Send + Sync {
    /// Must change whenever a verdict could change: model id, prompt-template hash, knowledge-base version.
    /// Claim-cache keys include it.
    fn id(&self) -> String;
    async fn verify(&self, claim: &str) -> Result<ClaimVerdict>;
}

/// Sentence encoder for claim clustering, saliency and the semantic claim cache. Vectors are L2-normalised.
#[async_trait]
pub trait Encoder: Send + Sync {
    fn id(&self) -> String;
    fn dim(&self) -> usize;
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>>;
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PatientReply {
    pub text: String,
    /// The simulator ends the consultation (e.g. the doctor gave a diagnosis, or the patient leaves).
    pub end: bool,
}

/// The simulated patient. It sees the case and the dialogue, never an injected interruption snippet.
#[async_trait]
pub trait PatientSimulator: Send + Sync {
    fn id(&self) -> String;
    /// The opening patient utterance of a fresh consultation.
    async fn opening(&self, case: &Case) -> Result<String>;
    /// The patient's answer to the doctor's latest reply `doctor`, given the dialogue so far.
    async fn reply(&self, case: &Case, dialogue: &[Turn], doctor: &str) -> Result<PatientReply>;
}

/// A stage's quality score G_k in [0, 1], also used as the gate score V_k.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageScore {
    pub score: f64,
    /// False when the stage output did not follow the grammar (then score is 0 and it is counted).
    pub parsed: bool,
    #[serde(default)]
    pub details: serde_json::Value,
}

pub trait StageScorer: Send + Sync {
    /// `doctor_replies` are the doctor's replies of this stage (thinking stripped by the scorer); `dialogue` is
    /// the whole consultation so far (Inquiry coverage looks at every question asked).
    fn score(
        &self,
        case: &Case,
        stage: Stage,
        doctor_replies: &[String],
        dialogue: &[Turn],
    ) -> StageScore;
}

/// Sampling knobs, per request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_p: f32,
    /// 0 = off.
    pub top_k: u32,
    /// 0 = off.
    pub min_p: f32,
    pub max_new_tokens: u32,
    pub seed: Option<u64>,
    pub stop_token_ids: Vec<u32>,
    pub stop_strings: Vec<String>,
    /// Also return, per generated token, the log-probs of this many most likely tokens
    /// ([`GenerateOutput::top_logprobs`]); 0 = off, and then nothing extra is computed.
    pub top_logprobs: u32,
    /// Report `logprobs` (and `top_logprobs`) under the distribution the token was drawn from,
    /// softmax(logits / temperature), instead of the model's own softmax(logits) (vLLM's `processed_logprobs`
    /// against its default `raw_logprobs`). Rollouts for training set it: the trainer computes pi_old and the
    /// ratio under the sampling temperature (method.md section 9), and the mismatch correction compares like with
    /// like. Greedy requests (temperature 0) report the model's own log-probs either way.
    pub logprobs_at_temperature: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            max_new_tokens: 256,
            seed: None,
            stop_token_ids: vec![],
            stop_strings: vec![],
            top_logprobs: 0,
            logprobs_at_temperature: false,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GenerateRequest {
    pub prompt_ids: Vec<u32>,
    pub sampling: SamplingParams,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A stop token (included in `token_ids`) or stop string ended generation.
    Stop,
    /// `max_new_tokens` reached.
    Length,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GenerateOutput {
    pub token_ids: Vec<u32>,
    /// Log-prob of each generated token under the policy's own log pi (before temperature etc. are applied),
    /// or under softmax(logits / temperature) when the request set `sampling.logprobs_at_temperature`.
    pub logprobs: Vec<f32>,
    /// Per generated token, the `sampling.top_logprobs` most likely tokens and their log-probs under the same
    /// distribution as `logprobs`, most likely first; empty when not requested.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_logprobs: Vec<Vec<(u32, f32)>>,
    pub finish: FinishReason,
    /// For MoE policies: the experts chosen for the generated tokens (routing replay).
    pub routed_experts: Option<RoutedExperts>,
    /// For MoE policies: the experts chosen for every prompt token, when the backend returns them (an external
    /// server asked for `return_routed_experts`); the environment gives them to the positions it fed, as it
    /// does with the built-in engine's prompt routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_routed_experts: Option<RoutedExperts>,
}

/// Token-in / token-out generation: the built-in engine or an external OpenAI-compatible server.
#[async_trait]
pub trait RolloutBackend: Send + Sync {
    fn id(&self) -> String;
    async fn generate(&self, reqs: Vec<GenerateRequest>) -> Result<Vec<GenerateOutput>>;
    /// `(MoE layers, top-k)` of the expert choices every output carries (`routed_experts` and
    /// `prompt_routed_experts`, for routing replay); None when outputs carry none.
    fn routing(&self) -> Option<(usize, usize)> {
        None
    }
}

/// What a [`ChatBackend`] answered.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatReply {
    /// The visible text (thinking, when the server returns it apart, is not included).
    pub text: String,
    /// Generation stopped at `max_new_tokens`.
    pub truncated: bool,
}

/// Text-in / text-out generation: a policy served by an OpenAI-compatible chat endpoint (vLLM, SGLang,
/// `spar serve`, a hosted model), whose tokenizer spar does not know. Rollout plays it in the same environment as
/// a token backend, encoding its replies into the episode's one token stream; HealthBench asks it directly.
#[async_trait]
pub trait ChatBackend: Send + Sync {
    /// Names the model (reports, audit).
    fn id(&self) -> String;
    /// The next assistant message after `conversation` (system, user and assistant turns, oldest first; earlier
    /// assistant turns without thinking). Of `sampling`, `temperature`, `top_p`, `max_new_tokens` and `seed` are
    /// used; token ids mean nothing to a text endpoint and are ignored. Implementations must be deterministic
    /// at temperature 0 as far as the server allows, so two evaluations of one model agree.
    async fn chat(&self, conversation: &[Turn], sampling: &SamplingParams) -> Result<ChatReply>;
}

/// Servers that load new policy weights from a folder (`[rollout.weight_sync]`): the external rollout engine
/// after each learner update.
#[async_trait]
pub trait WeightReceiver: Send + Sync {
    /// The servers, for messages.
    fn describe(&self) -> String;
    /// Loads the transformers-layout folder `folder` (a path the servers can read) as policy version `version`
    /// on every server; returns once each one serves it, or the first server's error.
    async fn load(&self, folder: &std::path::Path, version: u64) -> Result<()>;
}
