//! Learning-rate schedule: linear warmup, then constant or cosine decay to `min_ratio * lr`.
use serde::{Deserialize, Serialize};
pub use spar_core::recipe::LrDecay as Decay;

/// Stateless in the step: a resumed run only needs the step counter to get the same rate.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct LrSchedule {
    pub base_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
    pub decay: Decay,
    /// Cosine floor as a fraction of `base_lr`.
    pub min_ratio: f64,
}

impl LrSchedule {
    /// Warmup over `warmup_steps`, then `decay` (recipe key `trainer.schedule`) until `total_steps`.
    pub fn new(base_lr: f64, warmup_steps: usize, total_steps: usize, decay: Decay) -> Self {
        LrSchedule {
            base_lr,
            warmup_steps,
            total_steps,
            decay,
            min_ratio: 0.0,
        }
    }

    /// Learning rate of optimizer step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.base_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.decay {
            Decay::Constant => self.base_lr,
            Decay::Cosine => {
                let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
                let p = ((step - self.warmup_steps) as f64 / span).min(1.0);
                let c = 0.5 * (1.0 + (std::f64::consts::PI * p).cos());
                self.base_lr * (self.min_ratio + (1.0 - self.min_ratio) * c)
            }
        }
    }
}
