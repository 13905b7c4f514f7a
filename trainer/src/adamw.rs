//! AdamW over tensors, with state that can be saved (tch's `nn::AdamW` cannot export its moments).
//! Parameters in bf16 get fp32 master copies; moments are fp32; the update happens on the master and is copied
//! back, so low-precision compute never accumulates rounding in the weights. Matches `torch.optim.AdamW`.
//!
//! The low-precision parameters' masters and moments live in three flat fp32 buffers (each parameter's state is
//! a view into them), and their update runs over the buffers in chunks of [`FLAT_CHUNK`] elements, each chunk's
//! gradients gathered into one fp32 buffer: a dozen kernels a chunk instead of ~30 a parameter. On a GPU the
//! per-parameter loop was host-bound (a Qwen3-0.6B has 311 parameter tensors: 9,610 dispatched ops and 182 ms a
//! step on an H100, for 57 ms of kernels); the flat update is the same arithmetic on the same values, element by
//! element, so it gives the same bits. fp32 parameters (a sharded learner's master chunks, models trained in
//! fp32) are updated in place one by one.
//!
//! [`OptimizerState::Compact`] trades precision of the state for memory on bf16 parameters (the idea of
//! torchdistx's `AnyPrecisionAdamW`): no fp32 master but a bf16 compensation buffer holding what the bf16 weight
//! lost in rounding (weight + compensation is the weight the update sees: ~17 bits of mantissa instead of 24),
//! and a bf16 first moment. The second moment stays fp32: with beta2 = 0.999 a step changes it by 0.1%, below
//! bf16's resolution, so in bf16 it could never decay. 8 bytes of state a parameter instead of 12 (with the
//! bf16 weight and gradient: 12 bytes in all instead of 16); the arithmetic of a step is fp32 either way.
//!
//! [`OptimizerState::Packed`] keeps the compact state in fewer bits: the compensation as an int8 count of 1/256ths
//! of the weight's bf16 ulp (weight + compensation: 16 bits of mantissa), and the second moment in 24 bits (fp32
//! without its sign, always 0, and with its low 7 mantissa bits rounded away: 16 bits of mantissa, so a 0.1%
//! change is 65 of its units, and its square root is within 2^-18 of fp32's). 6 bytes of state a parameter, 10
//! in all; for the memory of a large MoE at small batch, where the state is most of it. A state saves in the
//! compact form (exactly) and loads from any of the three.
//!
//! On a GPU the compact and packed steps run one fused kernel a parameter (`optimizer_ops::adamw_bf16_fused`):
//! no gathered gradient and no fp32 temporaries, the same bits as the chunked torch ops used elsewhere.
use anyhow::{Context, Result};
pub use spar_core::recipe::OptimizerState;
use spar_model::optimizer_ops::{self, AdamWStep, Bf16State};
use std::path::Path;
use tch::{Device, Kind, Tensor, nn::VarStore};

/// Elements per chunk of the flat update: bounds its temporaries (a few fp32 buffers of this size).
pub const FLAT_CHUNK: i64 = 1 << 26;

#[derive(Clone, Copy, Debug)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// How bf16 parameters keep their state (module doc; `trainer.optimizer_state`): fp32 masters and moments,
    /// or a compensation instead of a master and a bf16 first moment (compact, packed). No effect on fp32
    /// parameters.
    pub state: OptimizerState,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            state: OptimizerState::Fp32,
        }
    }
}

struct ParamState {
    name: String,
    param: Tensor,
    /// fp32 copy of a low-precision parameter; None when the parameter is fp32 itself or has `comp`.
    master: Option<Tensor>,
    /// Compact state: what the bf16 parameter lost in rounding (bf16), so that param + comp is its weight;
    /// packed: the same as an int8 count of 1/256ths of the weight's ulp.
    comp: Option<Tensor>,
    m: Tensor,
    /// The second moment; packed: its high 16 bits (int16), the low 8 in `v_lo`.
    v: Tensor,
    v_lo: Option<Tensor>,
    /// Where `master`, `m` and `v` sit in the flat buffers (offset, elements); None: tensors of their own.
    flat: Option<(i64, i64)>,
}

/// What the flat buffers keep of the weights themselves.
enum FlatWeights {
    /// fp32 masters, copied into the parameters after each step.
    Masters(Tensor),
    /// Compensations (compact: bf16, packed: int8): parameter + compensation is the weight.
    Compensations(Tensor),
}

impl FlatWeights {
    fn tensor(&self) -> &Tensor {
        match self {
            FlatWeights::Masters(t) | FlatWeights::Compensations(t) => t,
        }
    }
}

/// The masters and moments of the low-precision parameters on one device, back to back: fp32 masters and
/// moments, or (compact) bf16 compensations, bf16 first and fp32 second moments, or (packed) int8 compensations,
/// bf16 first moments and second moments in two parts.
struct FlatState {
    /// The parameters in the buffers, in buffer order (indices into `AdamW::params`).
    members: Vec<usize>,
    weights: FlatWeights,
    m: Tensor,
    v: Tensor,
    /// Packed: the second moments' low 8 bits (uint8).
    v_lo: Option<Tensor>,
}

impl FlatState {
    fn numel(&self) -> i64 {
        self.m.size()[0]
    }
}

pub struct AdamW {
    pub config: AdamWConfig,
    /// Optimizer steps taken (bias correction uses it).
    pub step: u64,
    params: Vec<ParamState>,
    flat: Option<FlatState>,
    /// Elements per chunk of the flat update ([`FLAT_CHUNK`]; tests set it small to cross chunk boundaries).
    chunk: i64,
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
        // Low-precision parameters on the first one's device share the flat buffers (compact: bf16 ones; any
        // other low-precision parameter keeps an fp32 master of its own).
        let compact = config.state != OptimizerState::Fp32;
        let packed = config.state == OptimizerState::Packed;
        let flat_kind = |p: &Tensor| {
            if compact {
                // The update writes the parameters through flat views of them.
                p.kind() == Kind::BFloat16 && p.is_contiguous()
            } else {
                p.kind() != Kind::Float
            }
        };
        let flat_device = named
            .iter()
            .find(|(_, p)| flat_kind(p))
            .map(|(_, p)| p.device());
        let in_flat = |p: &Tensor| flat_kind(p) && Some(p.device()) == flat_device;
        let mut members = Vec::new();
        let mut numel = 0i64;
        let params: Vec<ParamState> = named
            .into_iter()
            .enumerate()
            .map(|(i, (name, param))| {
                let flat = in_flat(&param).then(|| {
                    let n = param.numel() as i64;
                    members.push(i);
                    numel += n;
                    (numel - n, n)
                });
                // Flat members get views into the buffers below; every master is filled from its parameter
                // once, by `sync_master_from_params`.
                let (master, m, v) = if flat.is_some() {
                    (Some(Tensor::new()), Tensor::new(), Tensor::new())
                } else {
                    let fp32 = (Kind::Float, param.device());
                    let master =
                        (param.kind() != Kind::Float).then(|| Tensor::empty(param.size(), fp32));
                    (
                        master,
                        Tensor::zeros(param.size(), fp32),
                        Tensor::zeros(param.size(), fp32),
                    )
                };
                ParamState {
                    name,
                    param,
                    master,
                    comp: None,
                    m,
                    v,
                    v_lo: None,
                    flat,
                }
            })
            .collect();
        let flat = flat_device.map(|device| {
            let zeros = |kind| Tensor::zeros([numel], (kind, device));
            FlatState {
                members,
                weights: match (compact, packed) {
                    (false, _) => {
                        FlatWeights::Masters(Tensor::empty([numel], (Kind::Float, device)))
                    }
                    (true, false) => FlatWeights::Compensations(zeros(Kind::BFloat16)),
                    (true, true) => FlatWeights::Compensations(zeros(Kind::Int8)),
                },
                m: zeros(if compact { Kind::BFloat16 } else { Kind::Float }),
                v: zeros(if packed { Kind::Int16 } else { Kind::Float }),
                v_lo: packed.then(|| zeros(Kind::Uint8)),
            }
        });
        let mut opt = AdamW {
            config,
            step: 0,
            params,
            flat,
            chunk: FLAT_CHUNK,
            last_update_ratio: 0.0,
            last_update_sums: (0.0, 0.0),
        };
        opt.point_into_flat();
        opt.sync_master_from_params();
        opt
    }

    /// Makes each flat member's `master`, `m` and `v` views into the flat buffers (after they were created
    /// or moved).
    fn point_into_flat(&mut self) {
        let Some(flat) = &self.flat else { return };
        for &i in &flat.members {
            let p = &mut self.params[i];
            let (offset, n) = p.flat.expect("flat member has a place");
            let view = |t: &Tensor| t.narrow(0, offset, n).view(p.param.size().as_slice());
            (p.master, p.comp) = match &flat.weights {
                FlatWeights::Masters(t) => (Some(view(t)), None),
                FlatWeights::Compensations(t) => (None, Some(view(t))),
            };
            p.m = view(&flat.m);
            p.v = view(&flat.v);
            p.v_lo = flat.v_lo.as_ref().map(view);
        }
    }

    /// Elements per chunk of the flat update (at least 1); the result does not depend on it.
    #[doc(hidden)]
    pub fn set_flat_chunk(&mut self, chunk: i64) {
        self.chunk = chunk.max(1);
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

    /// The flat members' gradients over elements `offset .. offset + n` of the buffers, in fp32 (zeros where a
    /// parameter got none): one chunk at a time, so that no fp32 copy of every gradient is ever whole (4 bytes a
    /// parameter, 22 GB for the 30B-A3B shape at 8 layers).
    fn grad_chunk(&self, flat: &FlatState, offset: i64, n: i64) -> Tensor {
        let pieces = self
            .chunk_pieces(flat, offset, n)
            .map(|(i, from, len)| {
                let p = &self.params[i].param;
                let g = p.grad();
                if g.defined() {
                    g.reshape([-1]).narrow(0, from, len)
                } else {
                    Tensor::zeros([len], (p.kind(), p.device()))
                }
            })
            .collect::<Vec<_>>();
        cat_f32(&pieces, n, flat.m.device())
    }

    /// The flat members' pieces of elements `offset .. offset + n` of the buffers: (member, first element
    /// within the member, length), in buffer order.
    fn chunk_pieces<'a>(
        &'a self,
        flat: &'a FlatState,
        offset: i64,
        n: i64,
    ) -> impl Iterator<Item = (usize, i64, i64)> + 'a {
        let end = offset + n;
        let place = |i: usize| self.params[i].flat.expect("flat member has a place");
        let first = flat.members.partition_point(|&i| {
            let (o, len) = place(i);
            o + len <= offset
        });
        flat.members[first..]
            .iter()
            .map(move |&i| (i, place(i)))
            .take_while(move |(_, (o, _))| *o < end)
            .map(move |(i, (o, len))| {
                let (from, to) = (offset.max(o), end.min(o + len));
                (i, from - o, to - from)
            })
    }

    /// A parameter's gradient in fp32 (zeros where it got none).
    fn grad_f32(p: &ParamState) -> Tensor {
        let g = p.param.grad();
        if g.defined() {
            g.to_kind(Kind::Float)
        } else {
            p.m.zeros_like()
        }
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

    /// Sum of the squares of all gradients (of this process's parameters: a shard's, when sharded), read
    /// from the device once.
    pub fn grad_sq_sum(&self) -> f64 {
        let mut sums = Vec::new();
        tch::no_grad(|| {
            if let Some(flat) = &self.flat {
                sums.extend(chunks(flat.numel(), self.chunk).map(|(offset, n)| {
                    self.grad_chunk(flat, offset, n).square().sum(Kind::Double)
                }));
            }
            for p in self.params.iter().filter(|p| p.flat.is_none()) {
                let g = p.param.grad();
                if g.defined() {
                    sums.push(g.to_kind(Kind::Double).square().sum(Kind::Double));
                }
            }
        });
        read_sum(sums)
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
        let numbers = AdamWStep {
            lr,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
            bias1: 1.0 - c.beta1.powi(self.step as i32),
            bias2: 1.0 - c.beta2.powi(self.step as i32),
        };
        // Squared norms summed on the device and read once (one sync per step, not one per parameter).
        let mut befores = Vec::new();
        let mut deltas = Vec::new();
        tch::no_grad(|| {
            if let Some(flat) = &self.flat {
                let fused = match &flat.weights {
                    FlatWeights::Compensations(comp) => self.fused_bf16_step(flat, comp, &numbers),
                    FlatWeights::Masters(_) => None,
                };
                if let Some(sums) = fused {
                    befores.push(sums.get(0));
                    deltas.push(sums.get(1));
                } else {
                    for (offset, n) in chunks(flat.numel(), self.chunk) {
                        let part = |t: &Tensor| t.narrow(0, offset, n);
                        let g = self.grad_chunk(flat, offset, n);
                        let (before, delta) = match &flat.weights {
                            FlatWeights::Masters(master) => optimizer_ops::adamw_step(
                                &mut part(master),
                                &mut part(&flat.m),
                                &mut part(&flat.v),
                                &g,
                                &numbers,
                            ),
                            FlatWeights::Compensations(comp) => {
                                self.compact_update(flat, comp, (offset, n), &g, &numbers)
                            }
                        };
                        befores.push(before);
                        deltas.push(delta);
                    }
                }
                if let FlatWeights::Masters(_) = flat.weights {
                    for &i in &flat.members {
                        let p = &mut self.params[i];
                        p.param
                            .copy_(p.master.as_ref().expect("flat member has a master"));
                    }
                }
            }
            for p in self.params.iter_mut().filter(|p| p.flat.is_none()) {
                let g = Self::grad_f32(p);
                let mut target = match &p.master {
                    Some(m) => m.shallow_clone(),
                    None => p.param.shallow_clone(),
                };
                let (before, delta) =
                    optimizer_ops::adamw_step(&mut target, &mut p.m, &mut p.v, &g, &numbers);
                befores.push(before);
                deltas.push(delta);
                if p.master.is_some() {
                    p.param.copy_(&target);
                }
            }
        });
        self.last_update_sums = (read_sum(befores), read_sum(deltas));
        self.last_update_ratio = update_ratio(self.last_update_sums);
    }

    /// The compact or packed step of every flat member through the fused kernel, one launch a parameter: no
    /// gathered gradient and no fp32 temporaries. Returns the device's two sums, or None where the kernel does
    /// not apply (off CUDA, `SPAR_FUSED_ADAMW=0`): the caller then takes the chunked torch ops, which give the
    /// same bits. A member the kernel cannot take after the first (a gradient of another layout) takes them
    /// over its own elements.
    fn fused_bf16_step(
        &self,
        flat: &FlatState,
        comp: &Tensor,
        numbers: &AdamWStep,
    ) -> Option<Tensor> {
        let device = flat.m.device();
        if !device.is_cuda() || !optimizer_ops::fused_adamw_enabled() {
            return None;
        }
        let sums = Tensor::zeros([2], (Kind::Double, device));
        for (k, &i) in flat.members.iter().enumerate() {
            let p = &self.params[i];
            let state = Bf16State {
                comp: p.comp.as_ref().expect("compact member has a compensation"),
                m: &p.m,
                v: &p.v,
                v_lo: p.v_lo.as_ref(),
            };
            let g = p.param.grad();
            let g = g.defined().then_some(&g);
            match optimizer_ops::adamw_bf16_fused(&p.param, g, &state, numbers, &sums) {
                Ok(true) => continue,
                Ok(false) if k == 0 => return None,
                Err(e) if k == 0 => {
                    static WARNED: std::sync::Once = std::sync::Once::new();
                    WARNED.call_once(|| {
                        tracing::warn!("fused bf16 AdamW step unavailable, using torch ops ({e:#})")
                    });
                    return None;
                }
                _ => {}
            }
            let place = p.flat.expect("flat member has a place");
            let g = self.grad_chunk(flat, place.0, place.1);
            let (before, delta) = self.compact_update(flat, comp, place, &g, numbers);
            let _ = sums.get(0).g_add_(&before);
            let _ = sums.get(1).g_add_(&delta);
        }
        Some(sums)
    }

    /// The compact (or packed) update of elements `offset .. offset + n` as torch ops
    /// (`optimizer_ops::adamw_bf16_composition`): the bf16 weights, widened to fp32, with their compensations and
    /// moments take the fp32 AdamW step; the rounded weights go back into the parameters.
    fn compact_update(
        &self,
        flat: &FlatState,
        comp: &Tensor,
        (offset, n): (i64, i64),
        g: &Tensor,
        numbers: &AdamWStep,
    ) -> (Tensor, Tensor) {
        let pieces: Vec<(usize, i64, i64)> = self.chunk_pieces(flat, offset, n).collect();
        let params: Vec<Tensor> = pieces
            .iter()
            .map(|&(i, from, len)| self.params[i].param.reshape([-1]).narrow(0, from, len))
            .collect();
        let part = |t: &Tensor| t.narrow(0, offset, n);
        let (comp, m, v) = (part(comp), part(&flat.m), part(&flat.v));
        let lo = flat.v_lo.as_ref().map(part);
        let state = Bf16State {
            comp: &comp,
            m: &m,
            v: &v,
            v_lo: lo.as_ref(),
        };
        let w32 = cat_f32(&params, n, g.device());
        let (rounded, before, delta) =
            optimizer_ops::adamw_bf16_composition(&w32, g, &state, numbers);
        let mut at = 0;
        for (p, &(_, _, len)) in params.iter().zip(&pieces) {
            // `p` views the parameter's storage (a parameter is contiguous), so this writes the parameter.
            p.shallow_clone().copy_(&rounded.narrow(0, at, len));
            at += len;
        }
        (before, delta)
    }

    /// Bytes of optimizer state (moments, masters, compensations) on every device.
    pub fn state_bytes(&self) -> u64 {
        let bytes = |t: &Tensor| (t.numel() * t.kind().elt_size_in_bytes()) as u64;
        let mut total = 0;
        if let Some(flat) = &self.flat {
            total += bytes(flat.weights.tensor()) + bytes(&flat.m) + bytes(&flat.v);
            total += flat.v_lo.as_ref().map_or(0, bytes);
        }
        for p in self.params.iter().filter(|p| p.flat.is_none()) {
            total += bytes(&p.m) + bytes(&p.v) + p.master.as_ref().map_or(0, bytes);
        }
        total
    }

    /// Moments, master weights (or compensations) and the step counter as named tensors. A packed state reads
    /// as the compact one it stands for (bf16 compensations, fp32 second moments: exactly its values).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("step".to_string(), Tensor::from_slice(&[self.step as i64]))];
        for p in &self.params {
            let cpu = tch::Device::Cpu;
            out.push((format!("m.{}", p.name), p.m.to_device(cpu)));
            let v = match &p.v_lo {
                Some(lo) => optimizer_ops::unpack_v(&p.v, lo),
                None => p.v.shallow_clone(),
            };
            out.push((format!("v.{}", p.name), v.to_device(cpu)));
            if let Some(master) = &p.master {
                out.push((
                    format!("master.{}", p.name),
                    master.to_device(tch::Device::Cpu),
                ));
            }
            if let Some(comp) = &p.comp {
                let comp = if comp.kind() == Kind::Int8 {
                    let w32 = p.param.detach().to_kind(Kind::Float);
                    optimizer_ops::unpack_comp(comp, &w32).to_kind(Kind::BFloat16)
                } else {
                    comp.shallow_clone()
                };
                out.push((format!("comp.{}", p.name), comp.to_device(cpu)));
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
    /// from, for messages). A state saved with fp32 masters loads into a compact or packed optimizer and the
    /// other way round (compensation = master - weight; master = weight + compensation), so
    /// `trainer.optimizer_state` can change on resume; the moments are cast (packed: rounded to its bits).
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
                match &p.v_lo {
                    Some(lo) => {
                        let saved = get(&k)?.to_kind(Kind::Float);
                        let (hi, low) = optimizer_ops::pack_v(&saved);
                        p.v.f_copy_(&hi).with_context(|| ctx(&k))?;
                        lo.shallow_clone().f_copy_(&low).with_context(|| ctx(&k))?;
                    }
                    None => {
                        p.v.f_copy_(get(&k)?).with_context(|| ctx(&k))?;
                    }
                }
                let (mk, ck) = (format!("master.{}", p.name), format!("comp.{}", p.name));
                let weight = || p.param.to_kind(Kind::Float);
                if let Some(master) = &mut p.master {
                    match (named.get(&mk), named.get(&ck)) {
                        (None, Some(comp)) => master
                            .f_copy_(&(weight() + comp.to_kind(Kind::Float)))
                            .with_context(|| ctx(&ck))?,
                        _ => master.f_copy_(get(&mk)?).with_context(|| ctx(&mk))?,
                    }
                }
                if let Some(comp) = &p.comp {
                    let mut comp = comp.shallow_clone();
                    let (saved, k) = match (named.get(&ck), named.get(&mk)) {
                        (None, Some(master)) => (master.to_kind(Kind::Float) - weight(), &mk),
                        _ => (get(&ck)?.to_kind(Kind::Float), &ck),
                    };
                    let saved = if comp.kind() == Kind::Int8 {
                        optimizer_ops::pack_comp(&saved, &weight())
                    } else {
                        saved
                    };
                    comp.f_copy_(&saved).with_context(|| ctx(k))?;
                }
            }
            Ok(())
        })
    }

    /// Moves the moments and fp32 master copies (or compensations) to `device` (`trainer.offload_optimizer`: to
    /// host memory while the rollout engine decodes, back before the next update; a tensor already there is not
    /// copied).
    /// The values are unchanged: a parked and restored state steps as one that stayed. Host copies are
    /// pageable: libtorch 2.11 warns on every `pin_memory(device)` call, the only form tch exposes.
    pub fn move_state(&mut self, device: tch::Device) -> Result<()> {
        if let Some(flat) = &mut self.flat {
            flat.weights = match &flat.weights {
                FlatWeights::Masters(t) => FlatWeights::Masters(t.f_to_device(device)?),
                FlatWeights::Compensations(t) => FlatWeights::Compensations(t.f_to_device(device)?),
            };
            flat.m = flat.m.f_to_device(device)?;
            flat.v = flat.v.f_to_device(device)?;
            flat.v_lo = flat
                .v_lo
                .as_ref()
                .map(|t| t.f_to_device(device))
                .transpose()?;
        }
        self.point_into_flat();
        for p in self.params.iter_mut().filter(|p| p.flat.is_none()) {
            p.m = p.m.f_to_device(device)?;
            p.v = p.v.f_to_device(device)?;
            if let Some(master) = &p.master {
                p.master = Some(master.f_to_device(device)?);
            }
        }
        Ok(())
    }

    /// Re-reads master weights from the parameters (after the model's weights were loaded from a checkpoint
    /// without optimizer state); compensations restart at zero.
    pub fn sync_master_from_params(&mut self) {
        tch::no_grad(|| {
            for p in &mut self.params {
                if let Some(master) = &mut p.master {
                    master.copy_(&p.param);
                }
            }
            if let Some(flat) = &mut self.flat
                && let FlatWeights::Compensations(comp) = &mut flat.weights
            {
                let _ = comp.zero_();
            }
        });
    }
}

/// `pieces` (their lengths summing to `n`) back to back in one new fp32 tensor on `device`.
fn cat_f32(pieces: &[Tensor], n: i64, device: Device) -> Tensor {
    let out = Tensor::empty([n], (Kind::Float, device));
    Tensor::cat_out(&out, pieces, 0)
}

/// `(offset, length)` of consecutive chunks of at most `chunk` elements covering `0..numel`.
fn chunks(numel: i64, chunk: i64) -> impl Iterator<Item = (i64, i64)> {
    (0..numel)
        .step_by(chunk as usize)
        .map(move |offset| (offset, chunk.min(numel - offset)))
}

/// The sum of device scalars, adding on each device first so that each device is read once.
fn read_sum(scalars: Vec<Tensor>) -> f64 {
    let mut per_device: Vec<(Device, Tensor)> = Vec::new();
    for s in scalars {
        match per_device.iter_mut().find(|(d, _)| *d == s.device()) {
            Some((_, acc)) => *acc = &*acc + s,
            None => per_device.push((s.device(), s)),
        }
    }
    per_device.iter().map(|(_, t)| t.double_value(&[])).sum()
}

/// ||delta|| / ||theta_before|| from their squares (0 for an all-zero model).
pub fn update_ratio((before_sq, delta_sq): (f64, f64)) -> f64 {
    if before_sq > 0.0 {
        (delta_sq / before_sq).sqrt()
    } else {
        0.0
    }
}
