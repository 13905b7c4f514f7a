//! `OpenAiChatBackend`: a policy served by any OpenAI-compatible chat endpoint (vLLM, SGLang, `spar serve`, a
//! hosted model) as spar-core's [`ChatBackend`], so `spar eval` plays a hosted model in the same consultations as
//! a local checkpoint. Retries, timeouts, the concurrency limit and PHI redaction for endpoints off loopback are
//! the client's.
use crate::client::OpenAiClient;
use crate::wire::{ChatMessage, ChatRequest};
use async_trait::async_trait;
use spar_core::Result;
use spar_core::grammar::strip_think;
use spar_core::recipe::EndpointConfig;
use spar_core::sample::{Role, Turn};
use spar_core::traits::{ChatBackend, ChatReply, SamplingParams};

/// Chat-completions policy.
#[derive(Clone, Debug)]
pub struct OpenAiChatBackend {
    client: OpenAiClient,
    enable_thinking: Option<bool>,
}

impl OpenAiChatBackend {
    /// No `enable_thinking` field is sent (hosted APIs reject it); see [`OpenAiChatBackend::with_thinking`].
    pub fn new(client: OpenAiClient) -> Self {
        OpenAiChatBackend {
            client,
            enable_thinking: None,
        }
    }

    pub fn from_endpoint(cfg: &EndpointConfig) -> Result<Self> {
        Ok(Self::new(OpenAiClient::new(cfg)?))
    }

    /// Qwen3's `enable_thinking` template switch, sent as `chat_template_kwargs` (vLLM / SGLang / `spar serve`).
    pub fn with_thinking(mut self, enable_thinking: Option<bool>) -> Self {
        self.enable_thinking = enable_thinking;
        self
    }

    pub fn client(&self) -> &OpenAiClient {
        &self.client
    }
}

#[async_trait]
impl ChatBackend for OpenAiChatBackend {
    /// `model @ base_url`.
    fn id(&self) -> String {
        format!(
            "{} @ {}",
            self.client.model(),
            self.client.config().base_url
        )
    }

    async fn chat(&self, conversation: &[Turn], sampling: &SamplingParams) -> Result<ChatReply> {
        let messages = conversation
            .iter()
            .map(|t| match t.role {
                Role::System => ChatMessage::system(t.text.clone()),
                Role::User => ChatMessage::user(t.text.clone()),
                // Earlier thinking is not sent back, as chat templates drop it.
                Role::Assistant => ChatMessage::assistant(strip_think(&t.text).trim().to_string()),
            })
            .collect();
        let mut req = ChatRequest::new(messages);
        req.temperature = Some(sampling.temperature);
        req.top_p = (sampling.top_p < 1.0).then_some(sampling.top_p);
        req.max_tokens = Some(sampling.max_new_tokens);
        req.seed = sampling.seed;
        if let Some(on) = self.enable_thinking {
            req = req.enable_thinking(on);
        }
        let resp = self.client.chat(&req).await?;
        Ok(ChatReply {
            text: resp.content,
            truncated: resp.finish_reason.as_deref() == Some("length"),
        })
    }
}
