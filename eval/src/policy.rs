//! The policy under evaluation, seen as a chat model: given the conversation so far, the next assistant message.
//! Consultations and HealthBench examples both drive it through [`ChatPolicy`], so a local checkpoint (the built-in
//! engine behind [`crate::BackendPolicy`]) and any OpenAI-compatible endpoint ([`crate::EndpointPolicy`]) are
//! compared on identical conversations.
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use spar_core::sample::Turn;

/// The assistant's reply.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyReply {
    /// The visible text, including any `<think>` block the model produced (scorers strip it).
    pub text: String,
    /// Generation stopped at the token limit.
    pub truncated: bool,
}

impl PolicyReply {
    pub fn new(text: impl Into<String>) -> Self {
        PolicyReply {
            text: text.into(),
            truncated: false,
        }
    }
}

/// A model that answers a conversation. Implementations must be deterministic when the sampling temperature is 0
/// so that two evaluations of one checkpoint agree.
#[async_trait]
pub trait ChatPolicy: Send + Sync {
    /// Names the model under evaluation (report headers, comparisons).
    fn id(&self) -> String;
    /// The next assistant message after `conversation` (system, user and assistant turns, oldest first).
    async fn reply(&self, conversation: &[Turn]) -> spar_core::Result<PolicyReply>;
}
