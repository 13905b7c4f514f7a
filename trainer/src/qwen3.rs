//! [`Policy`] for spar-model's Qwen3 / Qwen3-MoE: training forward (packing, routing replay), the MoE
//! load-balancing loss, activation-checkpointed backward, and HF-format weights in checkpoints.
use crate::policy::{Policy, PolicyInput, PolicyOutput, Routing};
use anyhow::Result;
use spar_model::{ForwardInput, Qwen3Model};
use std::path::Path;
use tch::{Tensor, nn::VarStore};

impl Policy for Qwen3Model {
    fn var_store(&self) -> &VarStore {
        &self.vs
    }
    fn var_store_mut(&mut self) -> &mut VarStore {
        &mut self.vs
    }
    fn forward(&self, input: &PolicyInput) -> Result<PolicyOutput> {
        // The final hidden states, not the logits: log-probs come from the fused chunked head.
        let mut fi = ForwardInput::new(input.input_ids)
            .positions(input.position_ids)
            .hidden_only();
        // Rows are right-padded, so under causal attention every real token sees only real tokens and the padding
        // mask changes nothing a loss reads (padding positions, masked out of every loss, then see earlier
        // padding too). Without it SDPA may take flash attention with grouped KV heads: no [B, 1, T, T] mask and
        // no copies of the KV heads a layer. Packed rows keep their block-diagonal mask.
        match input.packed_seq_ids {
            Some(s) => fi = fi.seq_ids(s).mask(input.attention_mask),
            None if padding_mask_kept() => fi = fi.mask(input.attention_mask),
            None => {}
        }
        if let Some(f) = input.forced_experts {
            fi = fi.forced_experts(f);
        }
        let mut out = Qwen3Model::forward(self, fi)?;
        // Shallow copies: the tape of the model's own backward keeps the originals.
        let routing = (!out.router_logits.is_empty()).then(|| Routing {
            logits: out
                .router_logits
                .iter()
                .map(|t| t.shallow_clone())
                .collect(),
            num_experts: self.config.num_experts,
            top_k: self.config.num_experts_per_tok,
        });
        let head = out
            .head
            .take()
            .ok_or_else(|| anyhow::anyhow!("the model returned no hidden states"))?;
        Ok(PolicyOutput {
            head,
            routing,
            handle: Some(Box::new(out)),
        })
    }
    fn backward(&self, loss: &Tensor, out: &PolicyOutput) -> Result<()> {
        match out
            .handle
            .as_ref()
            .and_then(|h| h.downcast_ref::<spar_model::ForwardOutput>())
        {
            Some(fo) => Qwen3Model::backward(self, loss, fo),
            None => Ok(loss.f_backward()?),
        }
    }
    fn save_weights(&self, dir: &Path) -> Result<()> {
        self.save_hf(dir)
    }
    fn load_weights(&mut self, dir: &Path) -> Result<()> {
        // Weights are written by save_hf in transformers' layout, which the in-place load reads back.
        self.load_weights_in_place(dir)
    }
}

/// `SPAR_PADDING_MASK=1` keeps the explicit padding mask in training forwards of unpacked rows (for comparisons).
pub fn padding_mask_kept() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("SPAR_PADDING_MASK").is_ok_and(|v| v == "1"))
}
