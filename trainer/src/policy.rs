//! What the trainer needs from a model: its variables and a forward to the LM head's output (logits, or the
//! final hidden states with the head's weight, whose per-token log-probs are then computed by the fused chunked
//! op without whole logits: `spar_model::token_logprobs`). Implemented for spar-model's Qwen3 / Qwen3-MoE (see
//! [`crate::qwen3`]); tests implement it for tiny models.
use anyhow::Result;
use spar_model::{LmHead, LogprobOptions, TokenLogprobs};
use tch::{Tensor, nn::VarStore};

/// Inputs of one training forward (row layout of [`crate::batch::MicroBatch`]).
pub struct PolicyInput<'a> {
    pub input_ids: &'a Tensor,
    /// 1 on real tokens. Rows are right-padded (each row's real tokens first, as `collate` lays them out), which
    /// lets a causal model drop the mask: a real token then sees only real tokens.
    pub attention_mask: &'a Tensor,
    pub position_ids: &'a Tensor,
    /// Packed rows: attend only within the same id.
    pub packed_seq_ids: Option<&'a Tensor>,
    /// Routing replay: `[B, T, moe_layers, k]` expert ids recorded by the rollout engine.
    pub forced_experts: Option<&'a Tensor>,
}

pub struct PolicyOutput {
    /// The LM head's output: `[B, T, vocab]` logits, or hidden states and the head's weight.
    pub head: LmHead,
    /// The MoE router logits of this forward, for the load-balancing loss (None for dense models).
    pub routing: Option<Routing>,
    /// Whatever the model needs to run its own backward (e.g. an activation-checkpointing tape).
    pub handle: Option<Box<dyn std::any::Any>>,
}

/// A MoE forward's router logits (one `[tokens, E]` tensor per MoE layer) and its routing shape.
pub struct Routing {
    pub logits: Vec<Tensor>,
    pub num_experts: usize,
    pub top_k: usize,
}

pub trait Policy {
    fn var_store(&self) -> &VarStore;
    fn var_store_mut(&mut self) -> &mut VarStore;
    fn forward(&self, input: &PolicyInput) -> Result<PolicyOutput>;
    /// Back-propagates `loss` computed from `out` (models with activation checkpointing recompute here).
    fn backward(&self, loss: &Tensor, _out: &PolicyOutput) -> Result<()> {
        Ok(loss.f_backward()?)
    }
    /// Writes the weights into folder `dir` (a checkpoint's `model/`).
    fn save_weights(&self, dir: &std::path::Path) -> Result<()> {
        save_var_store(self.var_store(), dir)
    }
    /// Reads weights written by [`Policy::save_weights`].
    fn load_weights(&mut self, dir: &std::path::Path) -> Result<()> {
        load_var_store(self.var_store_mut(), dir)
    }
}

impl PolicyOutput {
    /// An output of logits `[B, T, vocab]` and nothing else.
    pub fn from_logits(logits: Tensor) -> Self {
        PolicyOutput {
            head: LmHead::Logits(logits),
            routing: None,
            handle: None,
        }
    }

    /// Per-token log-probs of `targets` `[B, T]` under softmax(logits / temperature), float32 `[B, T]`.
    pub fn logprobs(&self, targets: &Tensor, temperature: f64) -> Result<Tensor> {
        Ok(self
            .head
            .logprobs(targets, &LogprobOptions::at(temperature))?
            .logp)
    }

    /// Log-probs, entropy (both carry gradient) and, with `argmax`, each position's most likely token.
    pub fn token_logprobs(&self, targets: &Tensor, opts: &LogprobOptions) -> Result<TokenLogprobs> {
        self.head.logprobs(targets, opts)
    }

    /// The logits `[B, T, vocab]`, computed whole from the hidden states when the policy returned those (for a
    /// value head over the logits).
    pub fn logits(&self) -> Result<Tensor> {
        self.head.logits()
    }
}

/// Default weight files of a policy that is only a var store (tests, value heads).
pub fn save_var_store(vs: &VarStore, dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    vs.save(dir.join("model.safetensors"))?;
    Ok(())
}

pub fn load_var_store(vs: &mut VarStore, dir: &std::path::Path) -> Result<()> {
    let p = dir.join("model.safetensors");
    vs.load(&p)
        .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
}
