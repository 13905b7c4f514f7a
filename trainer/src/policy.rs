//! What the trainer needs from a model: its variables and a forward to logits. Implemented for spar-model's
//! Qwen3 / Qwen3-MoE (see [`crate::qwen3`]); tests implement it for tiny models.
use anyhow::Result;
use tch::{Tensor, nn::VarStore};

/// Inputs of one training forward (row layout of [`crate::batch::MicroBatch`]).
pub struct PolicyInput<'a> {
    pub input_ids: &'a Tensor,
    pub attention_mask: &'a Tensor,
    pub position_ids: &'a Tensor,
    /// Packed rows: attend only within the same id.
    pub packed_seq_ids: Option<&'a Tensor>,
    /// Routing replay: `[B, T, moe_layers, k]` expert ids recorded by the rollout engine.
    pub forced_experts: Option<&'a Tensor>,
}

pub struct PolicyOutput {
    /// `[B, T, vocab]`.
    pub logits: Tensor,
    /// MoE load-balancing loss of this forward (None for dense models).
    pub aux_loss: Option<Tensor>,
    /// Whatever the model needs to run its own backward (e.g. an activation-checkpointing tape).
    pub handle: Option<Box<dyn std::any::Any>>,
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
