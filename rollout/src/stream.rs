//! An episode as ONE token stream, appended turn by turn and never re-rendered (method.md section 9).
//!
//! The Qwen3 chat template strips earlier turns' `<think>` blocks when it renders a whole conversation, so a
//! re-render would train on tokens that were never sampled. Instead every new turn is rendered on its own as
//! ChatML pieces and appended: template and patient tokens with loss mask 0, the doctor's sampled tokens (its
//! `<|im_end|>` included) with mask 1 and the engine's log-probs.
use crate::codec::TextCodec;
use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use spar_core::Stage;
use spar_core::sample::{RoutedExperts, StepSpan};

/// The ChatML pieces of Qwen3's template, tokenised once.
#[derive(Clone, Debug)]
pub struct ChatMl {
    pub im_start: u32,
    pub im_end: u32,
    /// `<|endoftext|>`, also a stop token when the vocabulary has it.
    pub endoftext: Option<u32>,
    /// `\n` between `<|im_end|>` and the next `<|im_start|>`.
    newline: Vec<u32>,
    /// Thinking off: the template itself writes an empty `<think>\n\n</think>\n\n` after the generation prompt.
    pub enable_thinking: bool,
}

impl ChatMl {
    pub fn new(codec: &dyn TextCodec, enable_thinking: bool) -> anyhow::Result<Self> {
        let id = |t: &str| {
            codec.token_id(t).with_context(|| {
                format!("the tokenizer has no `{t}` token (a ChatML / Qwen3 vocabulary is needed)")
            })
        };
        let im_start = id("<|im_start|>")?;
        let im_end = id("<|im_end|>")?;
        if !enable_thinking {
            id("<think>")?;
            id("</think>")?;
        }
        Ok(ChatMl {
            im_start,
            im_end,
            endoftext: codec.token_id("<|endoftext|>"),
            newline: codec.encode("\n")?,
            enable_thinking,
        })
    }

    /// Tokens that end a doctor reply.
    pub fn stop_ids(&self) -> Vec<u32> {
        let mut v = vec![self.im_end];
        v.extend(self.endoftext);
        v
    }

    /// `<|im_start|>system\n{text}<|im_end|>\n`.
    pub fn system(&self, codec: &dyn TextCodec, text: &str) -> anyhow::Result<Vec<u32>> {
        codec.encode(&format!("<|im_start|>system\n{text}<|im_end|>\n"))
    }

    /// A user turn followed by the generation prompt (and the empty think block when thinking is off):
    /// everything the doctor's next reply is conditioned on, as the template would render it.
    pub fn user_then_prompt(&self, codec: &dyn TextCodec, text: &str) -> anyhow::Result<Vec<u32>> {
        let think = if self.enable_thinking {
            ""
        } else {
            "<think>\n\n</think>\n\n"
        };
        codec.encode(&format!(
            "<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n{think}"
        ))
    }

    /// A whole earlier assistant turn written by someone else (an injected snippet): never sampled, mask 0.
    pub fn assistant_turn(&self, codec: &dyn TextCodec, text: &str) -> anyhow::Result<Vec<u32>> {
        codec.encode(&format!("<|im_start|>assistant\n{text}<|im_end|>\n"))
    }

    /// A whole earlier user turn (no generation prompt after it).
    pub fn user_turn(&self, codec: &dyn TextCodec, text: &str) -> anyhow::Result<Vec<u32>> {
        codec.encode(&format!("<|im_start|>user\n{text}<|im_end|>\n"))
    }

    /// Template tokens that close a sampled reply: `<|im_end|>` when the reply did not sample it (stopped on
    /// `<|endoftext|>` or a stop string, or truncated), then the `\n` before the next turn.
    pub fn close_reply(&self, sampled: &[u32]) -> Vec<u32> {
        let mut v = Vec::with_capacity(1 + self.newline.len());
        if sampled.last() != Some(&self.im_end) {
            v.push(self.im_end);
        }
        v.extend_from_slice(&self.newline);
        v
    }

    /// The reply's visible text: the stop token dropped, `<think>` removed, trimmed.
    pub fn reply_text(&self, codec: &dyn TextCodec, sampled: &[u32]) -> anyhow::Result<String> {
        let body = match sampled.last() {
            Some(&t) if t == self.im_end || Some(t) == self.endoftext => {
                &sampled[..sampled.len() - 1]
            }
            _ => sampled,
        };
        let raw = codec.decode(body)?;
        Ok(spar_core::grammar::strip_think(&raw).trim().to_string())
    }
}

/// The token stream of one episode with its per-token bookkeeping.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenStream {
    pub ids: Vec<u32>,
    pub loss_mask: Vec<u8>,
    pub logprobs: Vec<f32>,
    /// Routing of every position (MoE, when recorded): `layers * k` ids per token. None as soon as any
    /// appended piece lacks it.
    pub routed: Option<Routing>,
    pub steps: Vec<StepSpan>,
}

/// Expert ids of a run of tokens, `layers * k` per token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Routing {
    pub layers: usize,
    pub k: usize,
    pub ids: Vec<u16>,
}

impl TokenStream {
    pub fn new() -> Self {
        TokenStream::default()
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Appends template / prompt / patient tokens (loss mask 0, log-prob 0). Their expert choices arrive with
    /// the next generation's prompt routing ([`TokenStream::set_prompt_routing`]).
    pub fn push_context(&mut self, ids: &[u32]) {
        self.ids.extend_from_slice(ids);
        self.loss_mask.extend(std::iter::repeat_n(0u8, ids.len()));
        self.logprobs.extend(std::iter::repeat_n(0f32, ids.len()));
    }

    /// Appends a doctor reply's sampled tokens (mask 1) and records its step span.
    pub fn push_sampled(
        &mut self,
        stage: Stage,
        ids: &[u32],
        logprobs: &[f32],
        routing: Option<&Routing>,
    ) -> anyhow::Result<StepSpan> {
        if ids.len() != logprobs.len() {
            bail!(
                "{} sampled tokens but {} log-probs",
                ids.len(),
                logprobs.len()
            );
        }
        let start = self.ids.len();
        self.ids.extend_from_slice(ids);
        self.loss_mask.extend(std::iter::repeat_n(1u8, ids.len()));
        self.logprobs.extend_from_slice(logprobs);
        if let (Some(r), Some(new)) = (&mut self.routed, routing) {
            let per = r.layers * r.k;
            if new.layers == r.layers
                && new.k == r.k
                && new.ids.len() == ids.len() * per
                && r.ids.len() == start * per
            {
                r.ids.extend_from_slice(&new.ids);
            }
        }
        let span = StepSpan {
            stage,
            start,
            end: self.ids.len(),
        };
        self.steps.push(span);
        Ok(span)
    }

    /// Starts tracking MoE routing (`layers` MoE layers, top-`k`).
    pub fn track_routing(&mut self, layers: usize, k: usize) {
        self.routed = Some(Routing {
            layers,
            k,
            ids: Vec::new(),
        });
    }

    /// The engine's expert choices for every position of the prompt it was just given (the whole stream so
    /// far): authoritative for those positions.
    pub fn set_prompt_routing(&mut self, prompt: &Routing) {
        if let Some(r) = &mut self.routed {
            let per = r.layers * r.k;
            if prompt.layers == r.layers
                && prompt.k == r.k
                && prompt.ids.len() <= self.ids.len() * per
            {
                r.ids = prompt.ids.clone();
            }
        }
    }

    /// The routing of every position in the wire format. Positions after the last sampled token influence no
    /// log-prob; they repeat the last known token's experts. None when an earlier position is unknown.
    pub fn routed_experts(&self) -> Option<RoutedExperts> {
        let r = self.routed.as_ref()?;
        let per = r.layers * r.k;
        let needed = self.steps.last().map_or(0, |s| s.end) * per;
        if per == 0 || r.ids.len() < needed || r.ids.len() < per {
            return None;
        }
        let mut ids = r.ids.clone();
        ids.truncate(self.ids.len() * per);
        let last = ids[ids.len() - per..].to_vec();
        while ids.len() < self.ids.len() * per {
            ids.extend_from_slice(&last);
        }
        Some(RoutedExperts {
            layers: r.layers,
            k: r.k,
            ids,
        })
    }

    /// A copy whose loss mask, log-probs and steps are cleared: the pooled prefix a later stage continues from
    /// (its tokens were trained on in the earlier stage's sample).
    pub fn as_prefix(&self) -> TokenStream {
        TokenStream {
            ids: self.ids.clone(),
            loss_mask: vec![0; self.ids.len()],
            logprobs: vec![0.0; self.ids.len()],
            routed: self.routed.clone(),
            steps: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_logprobs_and_steps_line_up() {
        let mut s = TokenStream::new();
        s.push_context(&[1, 2, 3]);
        let span = s
            .push_sampled(Stage::Inquiry, &[7, 8], &[-0.5, -0.25], None)
            .unwrap();
        s.push_context(&[9]);
        assert_eq!(
            span,
            StepSpan {
                stage: Stage::Inquiry,
                start: 3,
                end: 5
            }
        );
        assert_eq!(s.loss_mask, vec![0, 0, 0, 1, 1, 0]);
        assert_eq!(s.logprobs, vec![0.0, 0.0, 0.0, -0.5, -0.25, 0.0]);
        let p = s.as_prefix();
        assert!(p.steps.is_empty() && p.loss_mask.iter().all(|&m| m == 0) && p.ids == s.ids);
        assert!(s.push_sampled(Stage::Ddx, &[1], &[], None).is_err());
    }

    #[test]
    fn routing_covers_every_position() {
        let mut s = TokenStream::new();
        s.track_routing(2, 1);
        s.push_context(&[1, 2]);
        s.set_prompt_routing(&Routing {
            layers: 2,
            k: 1,
            ids: vec![3, 4, 5, 6],
        });
        s.push_sampled(
            Stage::Inquiry,
            &[7],
            &[-1.0],
            Some(&Routing {
                layers: 2,
                k: 1,
                ids: vec![0, 1],
            }),
        )
        .unwrap();
        s.push_context(&[8]);
        assert_eq!(
            s.routed_experts().unwrap().ids,
            vec![3, 4, 5, 6, 0, 1, 0, 1]
        );
        // A reply whose prompt routing never arrived leaves a hole: no routing at all.
        s.push_context(&[9]);
        s.push_sampled(
            Stage::Inquiry,
            &[7],
            &[-1.0],
            Some(&Routing {
                layers: 2,
                k: 1,
                ids: vec![0, 1],
            }),
        )
        .unwrap();
        assert!(s.routed_experts().is_none());
    }
}
