//! PPO with a value head: generalised advantage estimation. The one estimator that lives in the trainer (it
//! needs the critic); every other estimator is spar-rewards'.
use tch::{Kind, Tensor, nn};

/// GAE over one trajectory of per-token rewards and values (value after the last token is 0).
/// Returns (advantages, returns).
pub fn gae(rewards: &[f64], values: &[f64], gamma: f64, lambda: f64) -> (Vec<f64>, Vec<f64>) {
    let n = rewards.len();
    let mut adv = vec![0.0; n];
    let mut last = 0.0;
    for t in (0..n).rev() {
        let next_v = if t + 1 < n { values[t + 1] } else { 0.0 };
        let delta = rewards[t] + gamma * next_v - values[t];
        last = delta + gamma * lambda * last;
        adv[t] = last;
    }
    let ret = adv.iter().zip(values).map(|(a, v)| a + v).collect();
    (adv, ret)
}

/// A scalar value per position from features `[B, T, D]` (a linear head in its own var store, so the policy's
/// checkpoint format does not change when a critic is added).
pub struct ValueHead {
    pub vs: nn::VarStore,
    linear: nn::Linear,
}

impl ValueHead {
    pub fn new(dim: i64, device: tch::Device) -> Self {
        let vs = nn::VarStore::new(device);
        let cfg = nn::LinearConfig {
            ws_init: nn::Init::Const(0.0),
            ..Default::default()
        };
        let linear = nn::linear(vs.root() / "value_head", dim, 1, cfg);
        ValueHead { vs, linear }
    }

    pub fn values(&self, features: &Tensor) -> anyhow::Result<Tensor> {
        Ok(features
            .to_kind(Kind::Float)
            .f_linear(&self.linear.ws, self.linear.bs.as_ref())?
            .squeeze_dim(-1))
    }

    /// Clipped value loss (PPO): max((v - R)^2, (clip(v, v_old +- eps) - R)^2) / 2, masked mean.
    pub fn loss(
        values: &Tensor,
        old_values: &Tensor,
        returns: &Tensor,
        mask: &Tensor,
        clip: f64,
    ) -> Tensor {
        let clipped = old_values + (values - old_values).clamp(-clip, clip);
        let l = (values - returns)
            .square()
            .maximum(&(clipped - returns).square())
            * 0.5;
        (l * mask).sum(Kind::Float) / mask.sum(Kind::Float).clamp_min(1.0)
    }
}
