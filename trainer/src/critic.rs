//! The critic of PPO with GAE (`rewards.spar.estimator = "gae"`): a value head over the policy's output logits,
//! with its own AdamW, saved beside the policy in every checkpoint.
//!
//! Why logits as features: spar-model's forward returns logits, not hidden states, and a linear map of the
//! logits `W h` (h the final normed hidden state, W the LM head) is a linear map of h restricted to W's row
//! space, which is all of h's space whenever vocab >= hidden size and W has full rank. So the head is a linear
//! value head on the last hidden state, parametrised through the LM head. By default it reads the logits
//! detached (only the head learns from the value loss, as with verl's separate critic);
//! `trainer.gae.shared_trunk = true` lets the value loss train the policy's layers too.
use crate::adamw::{AdamW, AdamWConfig};
use crate::gae::ValueHead;
use anyhow::{Context, Result};
use spar_core::recipe::GaeConfig;
use std::path::Path;
use tch::Tensor;

/// Value head + optimizer + knobs.
pub struct Critic {
    pub head: ValueHead,
    pub adamw: AdamW,
    pub cfg: GaeConfig,
    /// Global grad-norm clip of the head's own gradients.
    pub grad_clip: f64,
}

/// What one critic step did.
#[derive(Clone, Copy, Debug, Default)]
pub struct CriticStep {
    pub grad_norm: f64,
    pub skipped: bool,
}

impl Critic {
    /// A zero-initialised head over `feature_dim` features (the policy's vocabulary size).
    pub fn new(feature_dim: i64, device: tch::Device, cfg: GaeConfig, grad_clip: f64) -> Self {
        let head = ValueHead::new(feature_dim, device);
        let adamw = AdamW::new(&head.vs, AdamWConfig::default());
        Critic {
            head,
            adamw,
            cfg,
            grad_clip,
        }
    }

    /// `[B, T]` values from the policy's logits `[B, T, V]` (detached unless `shared_trunk`).
    pub fn values(&self, logits: &Tensor) -> Result<Tensor> {
        if self.cfg.shared_trunk {
            self.head.values(logits)
        } else {
            self.head.values(&logits.detach())
        }
    }

    /// Applies the accumulated gradients (or drops them when the policy's step was skipped).
    pub fn step(&mut self, policy_skipped: bool) -> CriticStep {
        let norm = self.adamw.clip_grad_norm(self.grad_clip);
        let skipped = policy_skipped || !norm.is_finite();
        if !skipped {
            self.adamw.step(self.cfg.critic_lr);
        }
        self.adamw.zero_grad();
        CriticStep {
            grad_norm: norm,
            skipped,
        }
    }

    /// Writes `dir/critic/{value_head,optimizer}.safetensors` (inside a checkpoint folder being written).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let d = dir.join("critic");
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        self.head.vs.save(d.join("value_head.safetensors"))?;
        self.adamw.save(&d.join("optimizer.safetensors"))
    }

    /// Reads what [`Critic::save`] wrote.
    pub fn load(&mut self, dir: &Path) -> Result<()> {
        let d = dir.join("critic");
        let p = d.join("value_head.safetensors");
        self.head.vs.load(&p).map_err(|e| {
            anyhow::anyhow!(
                "{}: {e} (was the checkpoint written without a critic?)",
                p.display()
            )
        })?;
        self.adamw.load(&d.join("optimizer.safetensors"))
    }
}
