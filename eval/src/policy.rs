//! The policy under evaluation, seen as a chat model: given the conversation so far, the next assistant message.
//! Consultations and HealthBench examples both drive it through [`ChatPolicy`], so a local checkpoint (the built-in
//! engine behind [`crate::BackendPolicy`]) and any OpenAI-compatible endpoint ([`crate::EndpointPolicy`]) are
//! compared on identical conversations.
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use spar_core::Case;
use spar_core::sample::{Role, Turn};
use spar_data::expert::{Expert, ExpertOptions};

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

    /// The next message in a consultation of `case`. A real policy never sees the case (this default ignores
    /// it); an oracle baseline such as the scripted expert ([`ExpertPolicy`]) does, to calibrate the evaluation.
    async fn reply_in_case(
        &self,
        case: &Case,
        conversation: &[Turn],
    ) -> spar_core::Result<PolicyReply> {
        let _ = case;
        self.reply(conversation).await
    }
}

/// The scripted expert of `spar-data` as a policy: the ceiling the simulator and scorers allow (an evaluation
/// in which the expert scores low is itself broken). It needs the case, so it answers only in consultations.
#[derive(Clone, Debug, Default)]
pub struct ExpertPolicy {
    /// Inquiry turn budget of the expert (its `<ready/>` turn included); None: the expert's default.
    pub inquiry_turns: Option<usize>,
}

#[async_trait]
impl ChatPolicy for ExpertPolicy {
    fn id(&self) -> String {
        "scripted-expert".into()
    }

    async fn reply(&self, _conversation: &[Turn]) -> spar_core::Result<PolicyReply> {
        Err(spar_core::Error::Other(
            "the scripted expert answers only in consultations (it needs the case)".into(),
        ))
    }

    async fn reply_in_case(
        &self,
        case: &Case,
        conversation: &[Turn],
    ) -> spar_core::Result<PolicyReply> {
        let mut opts = ExpertOptions::default();
        if let Some(n) = self.inquiry_turns {
            opts.inquiry_turns = n;
        }
        let dialogue: Vec<Turn> = conversation
            .iter()
            .filter(|t| t.role != Role::System)
            .cloned()
            .collect();
        let (_, text) = Expert::with_options(case, opts).next_utterance(&dialogue);
        Ok(PolicyReply::new(text))
    }
}
