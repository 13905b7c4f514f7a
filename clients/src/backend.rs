//! `OpenAiRolloutBackend`: token-in / token-out generation on an external OpenAI-compatible server (vLLM,
//! `spar serve`) through `/completions` with a token-id prompt.
//!
//! What the server must return: the generated token ids (`choices[0].token_ids`, vLLM's `return_token_ids`; or
//! `choices[0].logprobs.tokens` as `token_id:<id>`, vLLM's `return_tokens_as_token_ids`) and each one's
//! log-prob (`choices[0].logprobs.token_logprobs`). The client asks for both. The log-probs must be the
//! model's own, before temperature and top-p/k (vLLM's default `--logprobs-mode raw_logprobs`), since they are
//! the rollout log pi of the mismatch correction. A request with `sampling.top_logprobs` > 0 also gets the
//! alternatives, read from `choices[0].logprobs.top_logprobs` keyed `token_id:<id>`.
use crate::client::OpenAiClient;
use crate::wire::CompletionRequest;
use async_trait::async_trait;
use futures::future::join_all;
use spar_core::recipe::EndpointConfig;
use spar_core::traits::{GenerateOutput, GenerateRequest, RolloutBackend};
use spar_core::{Error, Result};

#[derive(Clone, Debug)]
pub struct OpenAiRolloutBackend {
    client: OpenAiClient,
}

impl OpenAiRolloutBackend {
    /// Fails when the client would PHI-redact (token ids cannot be redacted; see
    /// `OpenAiClient::complete_tokens`).
    pub fn new(client: OpenAiClient) -> Result<Self> {
        client.check_token_prompts_allowed()?;
        Ok(OpenAiRolloutBackend { client })
    }

    pub fn from_endpoint(cfg: &EndpointConfig) -> Result<Self> {
        Self::new(OpenAiClient::new(cfg)?)
    }

    pub fn client(&self) -> &OpenAiClient {
        &self.client
    }

    /// Generates every request concurrently (within the client's limit); one result per request, in order, so
    /// a failed request does not lose the others.
    pub async fn generate_each(&self, reqs: Vec<GenerateRequest>) -> Vec<Result<GenerateOutput>> {
        join_all(reqs.into_iter().map(|r| self.generate_one(r))).await
    }

    async fn generate_one(&self, req: GenerateRequest) -> Result<GenerateOutput> {
        let resp = self
            .client
            .complete_tokens(&CompletionRequest {
                prompt_ids: req.prompt_ids,
                sampling: req.sampling,
                logprobs: true,
            })
            .await?;
        let logprobs = resp.logprobs.ok_or_else(|| {
            Error::external(
                self.client.url("completions"),
                "the reply has no log-probs",
                false,
            )
        })?;
        Ok(GenerateOutput {
            token_ids: resp.token_ids,
            logprobs,
            top_logprobs: resp.top_logprobs,
            finish: resp.finish,
            routed_experts: None,
        })
    }
}

#[async_trait]
impl RolloutBackend for OpenAiRolloutBackend {
    fn id(&self) -> String {
        format!(
            "openai/{}@{}",
            self.client.model(),
            self.client.config().base_url
        )
    }

    /// All or nothing: the first failure (with its request index) fails the batch. Use `generate_each` to keep
    /// the successes.
    async fn generate(&self, reqs: Vec<GenerateRequest>) -> Result<Vec<GenerateOutput>> {
        self.generate_each(reqs)
            .await
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                r.map_err(|e| match e {
                    Error::External {
                        service,
                        msg,
                        retryable,
                    } => Error::External {
                        service,
                        msg: format!("request {i}: {msg}"),
                        retryable,
                    },
                    other => other,
                })
            })
            .collect()
    }
}
