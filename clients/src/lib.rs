//! spar-clients: the one OpenAI-compatible HTTP client of spar and spar-core's external-model traits over it.
//!
//! - [`OpenAiClient`]: chat, token-in/token-out completions, embeddings, models; timeouts, retries with
//!   backoff, a concurrency limit, PHI redaction for endpoints off loopback, counters ([`ClientStats`]).
//! - Trait implementations: [`LlmJudge`] (Judge), [`LlmClaimExtractor`] (ClaimExtractor), [`LlmFactVerifier`]
//!   (FactVerifier), [`LlmPatientSimulator`] (PatientSimulator), [`OpenAiEncoder`] (Encoder),
//!   [`OpenAiRolloutBackend`] (RolloutBackend), [`OpenAiChatBackend`] (ChatBackend: a policy served as text),
//!   [`SglangWeightReceiver`] (WeightReceiver: SGLang's weight refresh from disk after each update).
//!
//! The loopback fake OpenAI server that its tests (and other crates' tests) run against is `spar-testkit`.
//!
//! Servers: vLLM and SGLang (the Qwen3 "qwen3" reasoning parser's `reasoning_content` is read), OpenAI's API
//! (set `LlmOptions::enable_thinking = None` there), and `spar serve`. Token-in/token-out generation needs the
//! generated token ids back: vLLM's `return_token_ids` or `return_tokens_as_token_ids` (see [`backend`]).
pub mod backend;
pub mod chat;
pub mod client;
pub mod consistency;
pub mod encoder;
pub mod extractor;
pub mod fence;
pub mod judge;
pub mod privacy;
pub mod prompt;
pub mod retry;
pub mod simulator;
pub mod stats;
pub mod verifier;
pub mod weight_sync;
pub mod wire;

pub use backend::OpenAiRolloutBackend;
pub use chat::OpenAiChatBackend;
pub use client::{ClientBuilder, OpenAiClient};
pub use encoder::OpenAiEncoder;
pub use extractor::LlmClaimExtractor;
pub use judge::LlmJudge;
pub use prompt::LlmOptions;
pub use retry::RetryPolicy;
pub use simulator::{LlmPatientSimulator, SimulatorOptions};
pub use stats::ClientStats;
pub use verifier::LlmFactVerifier;
pub use weight_sync::SglangWeightReceiver;
pub use wire::{
    ChatMessage, ChatRequest, ChatResponse, CompletionRequest, CompletionResponse, ResponseFormat,
    TokenLogprob, Usage,
};
