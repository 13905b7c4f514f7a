//! Request bodies of the OpenAI-compatible API (the fields vLLM and SGLang accept that spar implements).
//! Unknown fields are ignored, as OpenAI-compatible servers do; a field spar cannot honour is an error.
use serde::Deserialize;
use serde_json::Value;

/// `stop`: a string or a list of strings.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

/// `prompt` of `/v1/completions`: text, token ids, or a batch of either.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
    TokenBatch(Vec<Vec<u32>>),
}

/// Sampling fields shared by both endpoints.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SamplingFields {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// vLLM: -1 or 0 = off.
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    #[serde(default)]
    pub stop_token_ids: Vec<u32>,
    pub n: Option<u32>,
    #[serde(default)]
    pub stream: bool,
    /// vLLM: do not stop at the end-of-sequence tokens.
    #[serde(default)]
    pub ignore_eos: bool,
    /// vLLM: keep the matched stop string in the returned text.
    #[serde(default)]
    pub include_stop_str_in_output: bool,
}

#[derive(Clone, Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Prompt,
    pub max_tokens: Option<u32>,
    /// Return each sampled token's log-prob and, for N > 0, the N most likely tokens' (`top_logprobs`, at most
    /// 20); absent: no log-probs.
    pub logprobs: Option<u32>,
    #[serde(default)]
    pub echo: bool,
    /// vLLM: report tokens as `token_id:<id>` strings.
    #[serde(default)]
    pub return_tokens_as_token_ids: bool,
    /// Also return the generated `token_ids` per choice (token-in / token-out clients).
    #[serde(default)]
    pub return_token_ids: bool,
    /// SGLang: also return the MoE expert choices of every token (`sglext.routed_experts`; the server must run
    /// with `--enable-return-routed-experts`).
    #[serde(default)]
    pub return_routed_experts: bool,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Value,
    pub tools: Option<Value>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    /// Return each sampled token's log-prob.
    #[serde(default)]
    pub logprobs: bool,
    /// Also return this many most likely tokens per position (0..=20; needs `logprobs: true`).
    pub top_logprobs: Option<u32>,
    pub chat_template_kwargs: Option<Value>,
    #[serde(default)]
    pub return_token_ids: bool,
    /// Refused here (see `/v1/completions`); read so that it is not silently ignored.
    #[serde(default)]
    pub return_routed_experts: bool,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}
