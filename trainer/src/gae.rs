//! PPO with a value head: generalised advantage estimation. The one estimator that lives in the trainer (it
//! needs the critic); every other estimator is spar-rewards'. Token rewards come from the scored sample (final
//! reward and step penalties at step ends, [`token_rewards`]); GAE runs over the doctor's sampled tokens only
//! ([`gae_masked`]), so patient turns and stage instructions are part of the environment's transition.
use anyhow::{Result, bail};
use spar_core::{Sample, Scored};
use std::collections::HashMap;
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

/// Per-token rewards of one sample, target-aligned like [`crate::batch::TrainItem`] (entry p rewards target
/// token p+1). At the last sampled token of step j: the step penalty -(1 - gamma_j)|R| (method.md section 9's
/// penalised form, so a violation never raises a reward); at the last sampled token of the last step, also the
/// final reward R. Zero elsewhere.
pub fn token_rewards(sample: &Sample, scored: &Scored) -> Result<Vec<f32>> {
    if sample.steps.len() != scored.steps.len() {
        bail!(
            "sample {}/{}: field `steps`: {} steps but its score has {}",
            sample.group_id,
            sample.sample_idx,
            sample.steps.len(),
            scored.steps.len()
        );
    }
    let t = sample.token_ids.len();
    let mut out = vec![0f32; t];
    let r = scored.reward;
    let mut last_end = None;
    for (span, score) in sample.steps.iter().zip(&scored.steps) {
        let Some(end) = (span.start.max(1)..span.end.min(t))
            .rev()
            .find(|&tok| sample.loss_mask[tok] == 1)
        else {
            continue;
        };
        out[end - 1] += (-(1.0 - score.gamma) * r.abs()) as f32;
        last_end = Some(end);
    }
    if let Some(end) = last_end {
        out[end - 1] += r as f32;
    }
    Ok(out)
}

/// [`token_rewards`] for each training item, joined on group id and sample index.
pub fn token_rewards_for_items(
    items: &[crate::batch::TrainItem],
    samples: &[Sample],
    scored: &[Scored],
) -> Result<Vec<Vec<f32>>> {
    let by_sample: HashMap<(&str, u32), &Sample> = samples
        .iter()
        .map(|s| ((s.group_id.as_str(), s.sample_idx), s))
        .collect();
    let by_score: HashMap<(&str, u32), &Scored> = scored
        .iter()
        .map(|s| ((s.group_id.as_str(), s.sample_idx), s))
        .collect();
    items
        .iter()
        .map(|it| {
            let key = (it.group_id.as_str(), it.sample_idx);
            match (by_sample.get(&key), by_score.get(&key)) {
                (Some(s), Some(sc)) => token_rewards(s, sc),
                _ => bail!(
                    "item {}/{} has no sample or score to take rewards from",
                    it.group_id,
                    it.sample_idx
                ),
            }
        })
        .collect()
}

/// GAE along each row of a `[B, T]` micro-batch over its trained tokens (`mask` > 0) only: positions with mask
/// 0 (prompt, patient turns, padding) are skipped, and a change of `seq_ids` (packed rows) starts a new
/// trajectory whose bootstrap value is 0. Returns (advantages, returns), 0 off the mask.
pub fn gae_masked(
    rewards: &Tensor,
    values: &Tensor,
    mask: &Tensor,
    seq_ids: &Tensor,
    gamma: f64,
    lambda: f64,
) -> Result<(Tensor, Tensor)> {
    let size = rewards.size();
    let (b, t) = (size[0] as usize, size[1] as usize);
    let flat = |x: &Tensor| -> Result<Vec<f64>> {
        Ok(Vec::<f64>::try_from(
            x.to_kind(Kind::Double)
                .to_device(tch::Device::Cpu)
                .reshape([-1]),
        )?)
    };
    let (r, v, m) = (flat(rewards)?, flat(values)?, flat(mask)?);
    let ids = Vec::<i64>::try_from(seq_ids.to_device(tch::Device::Cpu).reshape([-1]))?;
    let mut adv = vec![0f64; b * t];
    let mut ret = vec![0f64; b * t];
    for row in 0..b {
        let (mut last, mut next_v, mut cur) = (0.0, 0.0, i64::MIN);
        for p in (0..t).rev() {
            let i = row * t + p;
            if m[i] <= 0.0 {
                continue;
            }
            if ids[i] != cur {
                (last, next_v, cur) = (0.0, 0.0, ids[i]);
            }
            let delta = r[i] + gamma * next_v - v[i];
            last = delta + gamma * lambda * last;
            adv[i] = last;
            ret[i] = last + v[i];
            next_v = v[i];
        }
    }
    let opts = (Kind::Float, rewards.device());
    let to = |x: Vec<f64>| {
        Tensor::from_slice(&x)
            .reshape([b as i64, t as i64])
            .to_kind(opts.0)
            .to_device(opts.1)
    };
    Ok((to(adv), to(ret)))
}

/// Normalises `advs` (one tensor per micro-batch) to mean 0, std 1 over all trained tokens together.
pub fn whiten(advs: &mut [Tensor], masks: &[&Tensor]) {
    let (mut n, mut s, mut s2) = (0.0, 0.0, 0.0);
    for (a, m) in advs.iter().zip(masks) {
        n += m.sum(Kind::Double).double_value(&[]);
        s += (a * *m).sum(Kind::Double).double_value(&[]);
        s2 += (a.square() * *m).sum(Kind::Double).double_value(&[]);
    }
    if n < 2.0 {
        return;
    }
    let mean = s / n;
    let std = (s2 / n - mean * mean).max(0.0).sqrt();
    for (a, m) in advs.iter_mut().zip(masks) {
        *a = (&*a - mean) / (std + 1e-8) * *m;
    }
}

/// A scalar value per position from features `[B, T, D]` (a linear head in its own var store, so the policy's
/// checkpoint format does not change when a critic is added).
pub struct ValueHead {
    pub vs: nn::VarStore,
    linear: nn::Linear,
}

impl ValueHead {
    /// A zero-initialised head (every value starts at 0) over `dim` features.
    pub fn new(dim: i64, device: tch::Device) -> Self {
        let vs = nn::VarStore::new(device);
        // Zero weight and bias: every value starts at 0, and no draw from torch's global generator (a resumed
        // run must not depend on it).
        let cfg = nn::LinearConfig {
            ws_init: nn::Init::Const(0.0),
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        };
        let linear = nn::linear(vs.root() / "value_head", dim, 1, cfg);
        ValueHead { vs, linear }
    }

    /// `[B, T]` values of features `[B, T, D]`, in float32.
    pub fn values(&self, features: &Tensor) -> anyhow::Result<Tensor> {
        Ok(features
            .to_kind(Kind::Float)
            .f_linear(&self.linear.ws, self.linear.bs.as_ref())?
            .squeeze_dim(-1))
    }

    /// Per-token clipped value loss (PPO): max((v - R)^2, (clip(v, v_old +- eps) - R)^2) / 2.
    pub fn per_token_loss(
        values: &Tensor,
        old_values: &Tensor,
        returns: &Tensor,
        clip: f64,
    ) -> Tensor {
        let clipped = old_values + (values - old_values).clamp(-clip, clip);
        (values - returns)
            .square()
            .maximum(&(clipped - returns).square())
            * 0.5
    }

    /// Clipped value loss, masked mean.
    pub fn loss(
        values: &Tensor,
        old_values: &Tensor,
        returns: &Tensor,
        mask: &Tensor,
        clip: f64,
    ) -> Tensor {
        let l = Self::per_token_loss(values, old_values, returns, clip);
        (l * mask).sum(Kind::Float) / mask.sum(Kind::Float).clamp_min(1.0)
    }
}
