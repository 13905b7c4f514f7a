//! The policy under evaluation, as rollout plays it. Consultations run through `spar_rollout::Rollout` for every
//! kind of policy (the protocol is training's by construction); HealthBench asks the same policy single answers
//! through spar-core's [`ChatBackend`]. The caller builds the policy (loads the model, makes the HTTP client):
//! spar-eval loads no model and builds no client.
use anyhow::{Context, Result, bail};
use spar_core::recipe::RolloutSection;
use spar_core::traits::{ChatBackend, RolloutBackend};
use spar_rollout::Policy;
use spar_rollout::chat::{BackendChat, with_builtin_engine};
use spar_rollout::codec::{ByteCodec, TextCodec};
use spar_rollout::engine::EngineConfig;
use spar_rollout::env::{ExpertDoctor, ScriptedDoctor};
use std::sync::Arc;

/// What is evaluated and how its turns are generated.
#[derive(Clone)]
pub struct EvalPolicy<'m> {
    id: String,
    play: Policy<'m>,
    backend: Option<Arc<dyn RolloutBackend>>,
    codec: Option<Arc<dyn TextCodec>>,
}

impl<'m> EvalPolicy<'m> {
    /// A token-level policy with its tokenizer: `Policy::Builtin(&model)` (a local checkpoint on the built-in
    /// engine) or `Policy::External` with [`EvalPolicy::with_backend`] (vLLM / `spar serve` token in, token out).
    /// `id` names it in reports.
    pub fn tokens(id: impl Into<String>, play: Policy<'m>, codec: Arc<dyn TextCodec>) -> Self {
        EvalPolicy {
            id: id.into(),
            play,
            backend: None,
            codec: Some(codec),
        }
    }

    /// A policy served by an OpenAI-compatible chat endpoint (text in, text out; e.g.
    /// `spar_clients::OpenAiChatBackend`). Its replies are kept exactly in the episode's token stream
    /// ([`ByteCodec`]); the endpoint's own context length is the only limit.
    pub fn chat(chat: Arc<dyn ChatBackend>) -> Self {
        EvalPolicy {
            id: chat.id(),
            play: Policy::Chat(chat),
            backend: None,
            codec: None,
        }
    }

    /// The scripted expert of `spar-data` (`Policy::Scripted`): the ceiling the simulator and scorers allow (an
    /// evaluation in which the expert scores low is itself broken). `inquiry_turns`: its Inquiry budget, the
    /// `<ready/>` turn included; give the Inquiry turn limit of `[rollout]` so it finishes inquiry inside it.
    /// Its gold replies are never cut.
    pub fn expert(inquiry_turns: usize) -> Self {
        Self::scripted(
            "scripted-expert",
            Arc::new(ExpertDoctor::with_inquiry_turns(inquiry_turns)),
        )
    }

    /// Any scripted doctor (`Policy::Scripted`: it sees the case), e.g. an oracle baseline or a test double.
    /// Its replies are recorded as text and never cut.
    pub fn scripted(id: impl Into<String>, doctor: Arc<dyn ScriptedDoctor>) -> Self {
        EvalPolicy {
            id: id.into(),
            play: Policy::Scripted(doctor),
            backend: None,
            codec: None,
        }
    }

    /// The token backend of `Policy::External`.
    pub fn with_backend(mut self, backend: Arc<dyn RolloutBackend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Names the policy in reports.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// How rollout generates the doctor's turns.
    pub fn play(&self) -> Policy<'m> {
        self.play.clone()
    }

    /// The token backend of `Policy::External`, if any.
    pub fn backend(&self) -> Option<Arc<dyn RolloutBackend>> {
        self.backend.clone()
    }

    /// The tokenizer of a token-level policy; None for text policies (chat endpoint, scripted doctor).
    pub fn codec(&self) -> Option<Arc<dyn TextCodec>> {
        self.codec.clone()
    }

    /// Plays in a token stream of its own text, where no tokenizer limits it (chat endpoint, scripted doctor).
    pub fn is_text(&self) -> bool {
        self.codec.is_none()
    }

    /// The codec episodes of this policy are recorded with.
    pub(crate) fn stream_codec(&self) -> Arc<dyn TextCodec> {
        self.codec.clone().unwrap_or_else(|| Arc::new(ByteCodec))
    }

    /// Runs `work` with this policy as a chat model (HealthBench): a chat endpoint as it is, a token policy
    /// through [`BackendChat`] (the built-in engine served for as long as `work` runs). `rollout` gives the chat
    /// template switch and the engine's batch and context; `seed` the engine's.
    pub fn with_chat<R: Send>(
        &self,
        rollout: &RolloutSection,
        seed: u64,
        work: impl FnOnce(&dyn ChatBackend) -> R + Send,
    ) -> Result<R> {
        let codec = || {
            self.codec
                .clone()
                .context("a token-level policy needs its tokenizer")
        };
        match &self.play {
            Policy::Chat(chat) => Ok(work(chat.as_ref())),
            Policy::External => {
                let backend = self
                    .backend
                    .clone()
                    .context("Policy::External needs EvalPolicy::with_backend")?;
                let chat = BackendChat::new(backend, codec()?, rollout.enable_thinking)?
                    .with_id(self.id.clone());
                Ok(work(&chat))
            }
            Policy::Builtin(model) => {
                let codec = codec()?;
                let engine = EngineConfig {
                    max_batch: rollout.max_batch,
                    kv_slots: rollout.kv_slot_count(),
                    max_seq_len: rollout.max_seq_len,
                    seed,
                    batch_invariant: rollout.batch_invariant,
                    prefill_wait_steps: rollout.prefill_wait_steps,
                    async_decode: rollout.async_decode,
                    ..Default::default()
                };
                let thinking = rollout.enable_thinking;
                let id = self.id.clone();
                with_builtin_engine(model, engine, codec.clone(), &self.id, move |client| {
                    let chat = BackendChat::new(Arc::new(client), codec, thinking)?.with_id(id);
                    anyhow::Ok(work(&chat))
                })?
            }
            Policy::Scripted(_) => bail!(
                "{} answers only consultations (it needs the case); HealthBench needs a model or an endpoint",
                self.id
            ),
        }
    }
}
