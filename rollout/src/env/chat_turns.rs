//! A policy served as text (an OpenAI-compatible chat endpoint) in the rollout environment: the conversation goes
//! out as text, the reply comes back as text and is encoded into the episode's one token stream like any sampled
//! reply, so a hosted model plays exactly the consultation a local checkpoint plays.
use super::TurnGenerator;
use crate::codec::TextCodec;
use crate::engine::EngineOutput;
use anyhow::Result;
use async_trait::async_trait;
use spar_core::case::Case;
use spar_core::sample::Turn;
use spar_core::traits::{ChatBackend, FinishReason, GenerateOutput, GenerateRequest};
use std::sync::Arc;

/// A [`ChatBackend`] as a turn generator. The reply's text is encoded with `codec` (use
/// [`crate::codec::ByteCodec`], which keeps the text exactly, when the endpoint's tokenizer is unknown) and
/// closed by `<|im_end|>` unless the endpoint stopped at its token limit; log-probs are 0 (a text endpoint has
/// none to give). The endpoint is asked for `max_new_tokens` of its own tokens: its reply is never cut here.
pub struct ChatTurns {
    pub chat: Arc<dyn ChatBackend>,
    pub codec: Arc<dyn TextCodec>,
    pub im_end: u32,
}

#[async_trait]
impl TurnGenerator for ChatTurns {
    fn id(&self) -> String {
        self.chat.id()
    }

    async fn generate_turn(&self, _req: GenerateRequest) -> Result<EngineOutput> {
        anyhow::bail!(
            "the chat policy {} answers conversations, not token ids (generate_in_case)",
            self.chat.id()
        )
    }

    /// `dialogue` is the doctor's view of the consultation (system prompt, patient turns and stage instructions,
    /// its own earlier replies without thinking): what a chat server would be sent.
    async fn generate_in_case(
        &self,
        _case: &Case,
        dialogue: &[Turn],
        req: GenerateRequest,
    ) -> Result<EngineOutput> {
        let reply = self.chat.chat(dialogue, &req.sampling).await?;
        let mut token_ids = self.codec.encode(&reply.text)?;
        let finish = if reply.truncated {
            FinishReason::Length
        } else {
            token_ids.push(self.im_end);
            FinishReason::Stop
        };
        Ok(EngineOutput {
            output: GenerateOutput {
                logprobs: vec![0.0; token_ids.len()],
                token_ids,
                finish,
                routed_experts: None,
                prompt_routed_experts: None,
                top_logprobs: Vec::new(),
            },
            prompt_routing: None,
        })
    }
}
