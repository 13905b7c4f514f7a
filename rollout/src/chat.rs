//! A token policy seen as a chat model: [`BackendChat`] answers a conversation (HealthBench's single answers) with
//! the built-in engine or any [`RolloutBackend`], laying the conversation out in the same ChatML pieces the
//! environment appends during a consultation ([`ChatMl`]: system turn, user turn + generation prompt with the
//! empty think block when thinking is off, the reply, `<|im_end|>`), so the checkpoint sees what it was trained
//! on. Earlier replies are re-encoded from their text, without thinking, as a chat server would.
//! [`with_builtin_engine`] serves a local checkpoint to such work.
use crate::codec::TextCodec;
use crate::engine::{self, Engine, EngineClient, EngineConfig};
use crate::stream::ChatMl;
use anyhow::{Context, Result, anyhow};
use async_trait::async_trait;
use spar_core::grammar::strip_think;
use spar_core::sample::{Role, Turn};
use spar_core::traits::{
    ChatBackend, ChatReply, FinishReason, GenerateRequest, RolloutBackend, SamplingParams,
};
use spar_model::Qwen3Model;
use std::sync::Arc;

/// A [`RolloutBackend`] with the model's tokenizer as a [`ChatBackend`].
pub struct BackendChat {
    backend: Arc<dyn RolloutBackend>,
    codec: Arc<dyn TextCodec>,
    chat: ChatMl,
    id: String,
}

impl BackendChat {
    pub fn new(
        backend: Arc<dyn RolloutBackend>,
        codec: Arc<dyn TextCodec>,
        enable_thinking: bool,
    ) -> Result<Self> {
        let chat = ChatMl::new(codec.as_ref(), enable_thinking)?;
        let id = backend.id();
        Ok(BackendChat {
            backend,
            codec,
            chat,
            id,
        })
    }

    /// Names the policy in reports (default: the backend's id).
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// The prompt token ids of `conversation`, ending in the generation prompt.
    pub fn prompt(&self, conversation: &[Turn]) -> Result<Vec<u32>> {
        let codec = self.codec.as_ref();
        let mut ids = Vec::new();
        let mut i = 0;
        while i < conversation.len() {
            let t = &conversation[i];
            let next_is_reply = conversation
                .get(i + 1)
                .is_some_and(|n| n.role == Role::Assistant);
            match t.role {
                Role::System => ids.extend(self.chat.system(codec, &t.text)?),
                Role::User if next_is_reply => {
                    ids.extend(self.chat.user_then_prompt(codec, &t.text)?);
                    let reply = strip_think(&conversation[i + 1].text);
                    ids.extend(codec.encode(reply.trim())?);
                    ids.extend(self.chat.close_reply(&[]));
                    i += 1;
                }
                Role::User if i + 1 == conversation.len() => {
                    ids.extend(self.chat.user_then_prompt(codec, &t.text)?)
                }
                Role::User => ids.extend(self.chat.user_turn(codec, &t.text)?),
                Role::Assistant => ids.extend(
                    self.chat
                        .assistant_turn(codec, strip_think(&t.text).trim())?,
                ),
            }
            i += 1;
        }
        match conversation.last() {
            Some(t) if t.role == Role::User => Ok(ids),
            _ => Err(anyhow!(
                "the conversation must end with a user turn for the policy to answer"
            )),
        }
    }
}

/// FNV-1a of a seed and token ids: a sampled answer's seed depends on its prompt, so a sampled evaluation is
/// reproducible and different conversations do not share a random stream.
fn mix(seed: u64, ids: &[u32]) -> u64 {
    let mut h = 0xcbf29ce484222325u64 ^ seed;
    for id in ids {
        h = (h ^ u64::from(*id)).wrapping_mul(0x100000001b3);
    }
    h
}

#[async_trait]
impl ChatBackend for BackendChat {
    fn id(&self) -> String {
        self.id.clone()
    }

    async fn chat(
        &self,
        conversation: &[Turn],
        sampling: &SamplingParams,
    ) -> spar_core::Result<ChatReply> {
        let err =
            |e: anyhow::Error| spar_core::Error::external(self.id.clone(), format!("{e:#}"), false);
        let prompt_ids = self.prompt(conversation).map_err(err)?;
        let mut sampling = sampling.clone();
        sampling.seed = sampling.seed.map(|s| mix(s, &prompt_ids));
        for s in self.chat.stop_ids() {
            if !sampling.stop_token_ids.contains(&s) {
                sampling.stop_token_ids.push(s);
            }
        }
        let out = self
            .backend
            .generate(vec![GenerateRequest {
                prompt_ids,
                sampling,
            }])
            .await?;
        let out = out.into_iter().next().ok_or_else(|| {
            spar_core::Error::external(self.id.clone(), "the backend returned no output", false)
        })?;
        let text = self
            .chat
            .reply_text(self.codec.as_ref(), &out.token_ids)
            .map_err(err)?;
        Ok(ChatReply {
            text,
            truncated: out.finish == FinishReason::Length,
        })
    }
}

/// Runs the built-in engine over `model` on this thread while `work` runs on a scoped thread with a client of
/// it; returns what `work` returns. The engine batches whatever the work has in flight. Engine failures fail the
/// pending requests, so `work` finishes, and are returned.
pub fn with_builtin_engine<R: Send>(
    model: &Qwen3Model,
    cfg: EngineConfig,
    codec: Arc<dyn TextCodec>,
    id: &str,
    work: impl FnOnce(EngineClient) -> R + Send,
) -> Result<R> {
    let (client, inbox) = engine::channel(id.to_string());
    let mut engine = Engine::new(model, cfg)?.with_codec(codec);
    std::thread::scope(|s| {
        let handle = s.spawn(move || work(client));
        let served = engine.run_until(&inbox, || handle.is_finished());
        drop(engine);
        drop(inbox);
        let out = handle
            .join()
            .map_err(|_| anyhow!("the work served by the built-in engine panicked"))?;
        served.context("the built-in engine failed")?;
        Ok(out)
    })
}
