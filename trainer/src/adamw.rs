//! AdamW over tensors, with state that can be saved (tch's `nn::AdamW` cannot export its moments).
//! Parameters in bf16 get fp32 master copies; moments are fp32; the update happens on the master and is copied
//! back, so low-precision compute never accumulates rounding in the weights. Matches `torch.optim.AdamW`.
use anyhow::{Context, Result};
use std::path::Path;
use tch::{Kind, Tensor, nn::VarStore};

#[derive(Clone, Copy, Debug)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

struct ParamState {
    name: String,
    param: Tensor,
    /// fp32 copy of a low-precision parameter; None when the parameter is fp32 itself.
    master: Option<Tensor>,
    m: Tensor,
    v: Tensor,
}

pub struct AdamW {
    pub config: AdamWConfig,
    /// Optimizer steps taken (bias correction uses it).
    pub step: u64,
    params: Vec<ParamState>,
    /// ||theta_after - theta_before|| / ||theta_before|| of the last [`AdamW::step`] (over the weights it
    /// updates: the fp32 masters where there are some), a measure of how far one step moved the model.
    pub last_update_ratio: f64,
    /// (||theta_before||^2, ||delta||^2) of the last step, whose ratio is `last_update_ratio`: a sharded
    /// learner sums them over the ranks before dividing.
    pub last_update_sums: (f64, f64),
}

impl AdamW {
    /// Every trainable variable of `vs`, in name order (the order is part of the saved state).
    pub fn new(vs: &VarStore, config: AdamWConfig) -> Self {
        let mut named: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        Self::from_named(named, config)
    }

    /// AdamW over `named` tensors (leaves that require grad), in the given order (the saved state's).
    pub fn from_named(named: Vec<(String, Tensor)>, config: AdamWConfig) -> Self {
        let params = named
            .into_iter()
            .map(|(name, param)| {
                let master =
                    (param.kind() != Kind::Float).then(|| param.detach().to_kind(Kind::Float));
                let m = Tensor::zeros(param.size(), (Kind::Float, param.device()));
                let v = m.zeros_like();
                ParamState {
                    name,
                    param,
                    master,
                    m,
                    v,
                }
            })
            .collect();
        AdamW {
            config,
            step: 0,
            params,
            last_update_ratio: 0.0,
            last_update_sums: (0.0, 0.0),
        }
    }

    /// Where the optimizer state lives (its first moment's device); None without parameters.
    pub fn device(&self) -> Option<tch::Device> {
        self.params.first().map(|p| p.m.device())
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.param.zero_grad();
        }
    }

    /// Gradients in fp32 (zeros where a parameter got none).
    fn grads(&self) -> Vec<Tensor> {
        self.params
            .iter()
            .map(|p| {
                let g = p.param.grad();
                if g.defined() {
                    g.to_kind(Kind::Float)
                } else {
                    p.m.zeros_like()
                }
            })
            .collect()
    }

    /// Sums every parameter's gradient over the ranks of `group` (bucketed, see
    /// [`spar_dist::all_reduce_grads`]), so that every rank then holds the gradient of the union batch. A
    /// parameter that got no gradient on this rank (no item, an expert nobody routed to) gets a zero one first:
    /// every rank must send the same tensors, and [`AdamW::step`] treats a missing gradient as zero anyway.
    pub fn all_reduce_grads(&mut self, group: &dyn spar_dist::Collectives) -> Result<()> {
        if group.world_size() == 1 {
            return Ok(());
        }
        let params: Vec<Tensor> = self
            .params
            .iter()
            .map(|p| p.param.shallow_clone())
            .collect();
        crate::grad_sum::define_missing_grads(&params)?;
        let grads: Vec<Tensor> = self.params.iter().map(|p| p.param.grad()).collect();
        spar_dist::all_reduce_grads(group, &grads, spar_dist::DEFAULT_BUCKET_BYTES)
    }

    /// Sum of the squares of all gradients (of this process's parameters: a shard's, when sharded).
    pub fn grad_sq_sum(&self) -> f64 {
        let mut total = 0.0;
        for p in &self.params {
            let g = p.param.grad();
            if g.defined() {
                total += g
                    .to_kind(Kind::Double)
                    .square()
                    .sum(Kind::Double)
                    .double_value(&[]);
            }
        }
        total
    }

    /// Global L2 norm of all gradients.
    pub fn grad_norm(&self) -> f64 {
        self.grad_sq_sum().sqrt()
    }

    /// Scales every gradient so the global norm is at most `max_norm` (0 = off); returns the norm before.
    /// A non-finite norm is returned untouched so the caller can skip the step.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let norm = self.grad_norm();
        self.clip_to(norm, max_norm);
        norm
    }

    /// Scales every gradient by `max_norm / norm` when `norm` (the global norm, computed by the caller, e.g.
    /// over every rank's shard) exceeds `max_norm` (0 = off).
    pub fn clip_to(&mut self, norm: f64, max_norm: f64) {
        if max_norm > 0.0 && norm.is_finite() && norm > max_norm {
            let scale = max_norm / (norm + 1e-6);
            tch::no_grad(|| {
                for p in &mut self.params {
                    let mut g = p.param.grad();
                    if g.defined() {
                        let _ = g.g_mul_scalar_(scale);
                    }
                }
            });
        }
    }

    /// One AdamW update with learning rate `lr`.
    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let c = self.config;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        let grads = self.grads();
        // Squared norms summed on the device and read once (one sync per step, not one per parameter).
        let mut norms: Option<(Tensor, Tensor)> = None;
        tch::no_grad(|| {
            for (p, g) in self.params.iter_mut().zip(grads) {
                let mut target = match &p.master {
                    Some(m) => m.shallow_clone(),
                    None => p.param.shallow_clone(),
                };
                let before_sq = target.square().sum(Kind::Double);
                // theta_after = theta (1 - lr wd) - update, so delta = -(lr wd theta + update).
                let decay = (c.weight_decay != 0.0).then(|| &target * (lr * c.weight_decay));
                if c.weight_decay != 0.0 {
                    let _ = target.g_mul_scalar_(1.0 - lr * c.weight_decay);
                }
                let _ = p.m.g_mul_scalar_(c.beta1);
                let _ = p.m.g_add_(&(&g * (1.0 - c.beta1)));
                let _ = p.v.g_mul_scalar_(c.beta2);
                let _ = p.v.g_add_(&(&g * &g * (1.0 - c.beta2)));
                let denom = p.v.sqrt() / bc2.sqrt() + c.eps;
                let update = &p.m / denom * (lr / bc1);
                let delta_sq = match &decay {
                    Some(d) => (d + &update).square().sum(Kind::Double),
                    None => update.square().sum(Kind::Double),
                };
                let _ = target.g_sub_(&update);
                if p.master.is_some() {
                    p.param.copy_(&target.to_kind(p.param.kind()));
                }
                norms = Some(match norms.take() {
                    Some((b, d)) => (b + before_sq, d + delta_sq),
                    None => (before_sq, delta_sq),
                });
            }
        });
        self.last_update_sums = norms.map_or((0.0, 0.0), |(b, d)| {
            (b.double_value(&[]), d.double_value(&[]))
        });
        self.last_update_ratio = update_ratio(self.last_update_sums);
    }

    /// Moments, master weights and the step counter as named tensors.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("step".to_string(), Tensor::from_slice(&[self.step as i64]))];
        for p in &self.params {
            out.push((format!("m.{}", p.name), p.m.to_device(tch::Device::Cpu)));
            out.push((format!("v.{}", p.name), p.v.to_device(tch::Device::Cpu)));
            if let Some(master) = &p.master {
                out.push((
                    format!("master.{}", p.name),
                    master.to_device(tch::Device::Cpu),
                ));
            }
        }
        out
    }

    /// Writes the state as safetensors (the caller makes it atomic).
    pub fn save(&self, path: &Path) -> Result<()> {
        let named = self.state_tensors();
        Tensor::write_safetensors(&named, path)
            .with_context(|| format!("writing optimizer state {}", path.display()))
    }

    /// Restores a state written by [`AdamW::save`] for the same set of parameters.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let named: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(path)
            .with_context(|| format!("reading optimizer state {}", path.display()))?
            .into_iter()
            .collect();
        self.load_named(&named, path)
    }

    /// Restores the state from named tensors as [`AdamW::state_tensors`] names them (`path`: where they came
    /// from, for messages).
    pub fn load_named(
        &mut self,
        named: &std::collections::HashMap<String, Tensor>,
        path: &Path,
    ) -> Result<()> {
        let get = |k: &str| {
            named
                .get(k)
                .with_context(|| format!("{}: optimizer state has no tensor `{k}`", path.display()))
        };
        self.step = get("step")?.int64_value(&[0]) as u64;
        tch::no_grad(|| -> Result<()> {
            for p in &mut self.params {
                let ctx = |k: &str| {
                    format!(
                        "{}: optimizer tensor `{k}` does not fit the model",
                        path.display()
                    )
                };
                let k = format!("m.{}", p.name);
                p.m.f_copy_(get(&k)?).with_context(|| ctx(&k))?;
                let k = format!("v.{}", p.name);
                p.v.f_copy_(get(&k)?).with_context(|| ctx(&k))?;
                if let Some(master) = &mut p.master {
                    let k = format!("master.{}", p.name);
                    master.f_copy_(get(&k)?).with_context(|| ctx(&k))?;
                }
            }
            Ok(())
        })
    }

    /// Moves the moments and fp32 master copies to `device` (`trainer.offload_optimizer`: to host memory
    /// while the rollout engine decodes, back before the next update; a tensor already there is not copied).
    /// The values are unchanged: a parked and restored state steps as one that stayed. Host copies are
    /// pageable: libtorch 2.11 warns on every `pin_memory(device)` call, the only form tch exposes.
    pub fn move_state(&mut self, device: tch::Device) -> Result<()> {
        for p in &mut self.params {
            p.m = p.m.f_to_device(device)?;
            p.v = p.v.f_to_device(device)?;
            if let Some(master) = &p.master {
                p.master = Some(master.f_to_device(device)?);
            }
        }
        Ok(())
    }

    /// Re-reads master weights from the parameters (after the model's weights were loaded from a checkpoint
    /// without optimizer state).
    pub fn sync_master_from_params(&mut self) {
        tch::no_grad(|| {
            for p in &mut self.params {
                if let Some(master) = &mut p.master {
                    master.copy_(&p.param.to_kind(Kind::Float));
                }
            }
        });
    }
}

/// ||delta|| / ||theta_before|| from their squares (0 for an all-zero model).
pub fn update_ratio((before_sq, delta_sq): (f64, f64)) -> f64 {
    if before_sq > 0.0 {
        (delta_sq / before_sq).sqrt()
    } else {
        0.0
    }
}
