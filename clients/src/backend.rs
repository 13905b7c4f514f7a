//! `OpenAiRolloutBackend`: token-in / token-out generation on an external OpenAI-compatible server (vLLM,
//! `spar serve`) through `/completions` with a token-id prompt.
//!
//! What the server must return: the generated token ids (`choices[0].token_ids`, vLLM's `return_token_ids`; or
//! `choices[0].logprobs.tokens` as `token_id:<id>`, vLLM's `return_tokens_as_token_ids`) and each one's
//! log-prob (`choices[0].logprobs.token_logprobs`). The client asks for both. The log-probs must be the
//! model's own, before temperature and top-p/k (vLLM's default `--logprobs-mode raw_logprobs`), since they are
//! the rollout log pi of the mismatch correction. A request with `sampling.top_logprobs` > 0 also gets the
//! alternatives, read from `choices[0].logprobs.top_logprobs` keyed `token_id:<id>`.
//!
//! Routing replay (`with_routing`): every request also asks for the MoE expert choices the server made
//! (SGLang's `"return_routed_experts": true`), read from the response's `sglext.routed_experts` (SGLang and
//! `spar serve`, both started with `--enable-return-routed-experts`) and split as the built-in engine splits them:
//! the prompt's rows into `GenerateOutput::prompt_routed_experts`, the generated tokens' into `routed_experts`.
//! A reply without them is an error, never an output without routing: the learner would route afresh while
//! believing it replays.
use crate::client::OpenAiClient;
use crate::wire::{CompletionRequest, RoutedPayload};
use async_trait::async_trait;
use futures::future::join_all;
use spar_core::recipe::EndpointConfig;
use spar_core::routed_wire::MoeLayout;
use spar_core::traits::{GenerateOutput, GenerateRequest, RolloutBackend};
use spar_core::{Error, Result};

/// Token-in / token-out generation on an external server; see the module documentation.
#[derive(Clone, Debug)]
pub struct OpenAiRolloutBackend {
    client: OpenAiClient,
    /// The served policy's MoE layout when its expert choices are asked for (routing replay).
    routing: Option<MoeLayout>,
}

impl OpenAiRolloutBackend {
    /// Fails when the client would PHI-redact (token ids cannot be redacted; see
    /// `OpenAiClient::complete_tokens`).
    pub fn new(client: OpenAiClient) -> Result<Self> {
        client.check_token_prompts_allowed()?;
        Ok(OpenAiRolloutBackend {
            client,
            routing: None,
        })
    }

    /// Asks every request for the expert choices of the served MoE policy, whose layers and top-k `layout`
    /// gives, and returns them with each output (routing replay). A dense layout (no MoE layers) asks nothing.
    pub fn with_routing(mut self, layout: MoeLayout) -> Self {
        self.routing = (!layout.moe_layers.is_empty()).then_some(layout);
        self
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
        let prompt_len = req.prompt_ids.len();
        let resp = self
            .client
            .complete_tokens(&CompletionRequest {
                prompt_ids: req.prompt_ids,
                sampling: req.sampling,
                logprobs: true,
                return_routed_experts: self.routing.is_some(),
            })
            .await?;
        let logprobs = resp.logprobs.ok_or_else(|| {
            Error::external(
                self.client.url("completions"),
                "the reply has no log-probs",
                false,
            )
        })?;
        let (prompt_routed_experts, routed_experts) = match &self.routing {
            None => (None, None),
            Some(layout) => {
                let split = self.routing_of(
                    layout,
                    resp.routed_experts.as_ref(),
                    prompt_len,
                    resp.token_ids.len(),
                )?;
                (Some(split.prompt), Some(split.generated))
            }
        };
        Ok(GenerateOutput {
            token_ids: resp.token_ids,
            logprobs,
            top_logprobs: resp.top_logprobs,
            finish: resp.finish,
            routed_experts,
            prompt_routed_experts,
        })
    }

    /// The expert choices of one reply, or an error naming the endpoint and what to change.
    fn routing_of(
        &self,
        layout: &MoeLayout,
        payload: Option<&RoutedPayload>,
        prompt_len: usize,
        generated_len: usize,
    ) -> Result<spar_core::routed_wire::SplitRouting> {
        let url = self.client.url("completions");
        match payload {
            Some(RoutedPayload::Sglang(b64)) => layout
                .decode_sglang(b64, prompt_len, generated_len)
                .map_err(|e| Error::external(url, format!("sglext.routed_experts: {e}"), false)),
            Some(RoutedPayload::VllmNpy) => Err(Error::external(
                url,
                "the reply carries vLLM's choices[0].routed_experts (NumPy .npy bytes), which spar does not read;                  routing replay needs SGLang's sglext.routed_experts: serve the policy with SGLang or spar serve,                  started with --enable-return-routed-experts",
                false,
            )),
            None => Err(Error::external(
                url,
                "rollout.record_routing asked for the expert choices (\"return_routed_experts\": true) and the \
                 reply has no sglext.routed_experts: start the server with --enable-return-routed-experts \
                 (SGLang or spar serve), or set trainer.routing_replay = false and rollout.record_routing = false",
                false,
            )),
        }
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

    fn routing(&self) -> Option<(usize, usize)> {
        self.routing.as_ref().map(|l| (l.moe_layers.len(), l.top_k))
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
