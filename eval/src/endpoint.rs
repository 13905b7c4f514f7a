//! A policy served by any OpenAI-compatible chat endpoint (vLLM, SGLang, `spar serve`, a hosted model), so a
//! trained checkpoint can be compared with a hosted model on the same cases. Retries, timeouts, the concurrency
//! limit and PHI redaction for endpoints off loopback are the client's (`spar_clients::OpenAiClient`).
use crate::policy::{ChatPolicy, PolicyReply};
use async_trait::async_trait;
use spar_clients::{ChatMessage, ChatRequest, OpenAiClient};
use spar_core::recipe::EndpointConfig;
use spar_core::sample::{Role, Turn};

/// Chat-completions policy.
#[derive(Clone, Debug)]
pub struct EndpointPolicy {
    client: OpenAiClient,
    temperature: f32,
    max_tokens: u32,
    seed: Option<u64>,
    enable_thinking: Option<bool>,
}

impl EndpointPolicy {
    /// Greedy, seeded, 1024 new tokens, no `enable_thinking` field (hosted APIs reject it).
    pub fn new(client: OpenAiClient) -> Self {
        EndpointPolicy {
            client,
            temperature: 0.0,
            max_tokens: 1024,
            seed: Some(0),
            enable_thinking: None,
        }
    }

    pub fn from_endpoint(cfg: &EndpointConfig) -> spar_core::Result<Self> {
        Ok(Self::new(OpenAiClient::new(cfg)?))
    }

    pub fn with_sampling(mut self, temperature: f32, max_tokens: u32, seed: Option<u64>) -> Self {
        self.temperature = temperature;
        self.max_tokens = max_tokens;
        self.seed = seed;
        self
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
impl ChatPolicy for EndpointPolicy {
    fn id(&self) -> String {
        format!(
            "{} @ {}",
            self.client.model(),
            self.client.config().base_url
        )
    }

    async fn reply(&self, conversation: &[Turn]) -> spar_core::Result<PolicyReply> {
        let messages = conversation
            .iter()
            .map(|t| match t.role {
                Role::System => ChatMessage::system(t.text.clone()),
                Role::User => ChatMessage::user(t.text.clone()),
                // Earlier thinking is not sent back, as chat templates drop it.
                Role::Assistant => ChatMessage::assistant(
                    spar_core::grammar::strip_think(&t.text).trim().to_string(),
                ),
            })
            .collect();
        let mut req = ChatRequest::new(messages);
        req.temperature = Some(self.temperature);
        req.max_tokens = Some(self.max_tokens);
        req.seed = self.seed;
        if let Some(on) = self.enable_thinking {
            req = req.enable_thinking(on);
        }
        let resp = self.client.chat(&req).await?;
        Ok(PolicyReply {
            text: resp.content,
            truncated: resp.finish_reason.as_deref() == Some("length"),
        })
    }
}
