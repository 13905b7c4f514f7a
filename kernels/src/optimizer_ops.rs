//! One AdamW step over fp32 state: [`adamw_step`] runs the fused kernel (`optimizer_kernels.cu`, one pass over
//! the elements) where it applies and the torch composition [`adamw_composition`] elsewhere, which takes ~12
//! elementwise kernels, each reading and writing every element. The kernel replays the composition's float
//! operations in order, each rounded, so both give the same bits (`kernels/tests/it.rs`, GPU);
//! `SPAR_FUSED_ADAMW=0` keeps the composition, for comparisons.
use crate::cuda::{self, Arg};
use anyhow::{Result, ensure};
use tch::{Device, Kind, Tensor};

/// AdamW's numbers for one step, as the composition uses them (see [`adamw_flat_step`]).
#[derive(Clone, Copy, Debug)]
pub struct AdamWStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Bias corrections 1 - beta1^t and 1 - beta2^t.
    pub bias1: f64,
    pub bias2: f64,
}

/// Whether the fused step runs where it can (`SPAR_FUSED_ADAMW=0` turns it off).
pub fn fused_adamw_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("SPAR_FUSED_ADAMW").map_or(true, |v| v != "0"))
}

/// One AdamW step in place over `target` (fp32 weights), `m`, `v` (fp32 moments) with gradient `g` (fp32): the fused
/// kernel where it applies, else [`adamw_composition`]. Returns (sum of the weights' squares before the step, sum
/// of the squared change), float64 scalars on the weights' device, not yet read.
pub fn adamw_step(
    target: &mut Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    g: &Tensor,
    step: &AdamWStep,
) -> (Tensor, Tensor) {
    if target.device().is_cuda() {
        let sums = Tensor::zeros([2], (Kind::Double, target.device()));
        match adamw_flat_step(target, m, v, g, step, &sums) {
            Ok(true) => return (sums.get(0), sums.get(1)),
            Ok(false) => {}
            Err(e) => {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    eprintln!("spar-kernels: fused AdamW step unavailable, using torch ops ({e:#})")
                });
            }
        }
    }
    adamw_composition(target, m, v, g, step)
}

/// The AdamW step as torch ops (`torch.optim.AdamW`'s arithmetic, decoupled weight decay): the reference of the
/// fused kernel and the path off CUDA. Same contract as [`adamw_step`].
pub fn adamw_composition(
    target: &mut Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    g: &Tensor,
    step: &AdamWStep,
) -> (Tensor, Tensor) {
    let before_sq = target.square().sum(Kind::Double);
    // theta_after = theta (1 - lr wd) - update, so delta = -(lr wd theta + update).
    let decay = (step.weight_decay != 0.0).then(|| &*target * (step.lr * step.weight_decay));
    if step.weight_decay != 0.0 {
        let _ = target.g_mul_scalar_(1.0 - step.lr * step.weight_decay);
    }
    let _ = m.g_mul_scalar_(step.beta1);
    let _ = m.g_add_(&(g * (1.0 - step.beta1)));
    let _ = v.g_mul_scalar_(step.beta2);
    let _ = v.g_add_(&(g * g * (1.0 - step.beta2)));
    let denom = v.sqrt() * f64::from(inverse_bias2_sqrt(step)) + step.eps;
    let update = &*m / denom * (step.lr / step.bias1);
    let delta_sq = match &decay {
        Some(d) => (d + &update).square().sum(Kind::Double),
        None => update.square().sum(Kind::Double),
    };
    let _ = target.g_sub_(&update);
    (before_sq, delta_sq)
}

/// 1 / sqrt(1 - beta2^t) as the float both paths multiply by. The composition multiplies by it rather than
/// dividing by the host scalar sqrt(1 - beta2^t): torch 2.11's CUDA division by a host scalar rounds in its own
/// way (on an H100 it matched neither a float reciprocal nor a true division: 71% and 82% of quotients differed
/// in the last bit), which a kernel could not replay; a multiplication by a given float both can.
fn inverse_bias2_sqrt(step: &AdamWStep) -> f32 {
    1.0f32 / (step.bias2.sqrt() as f32)
}

/// The fused kernel alone: one AdamW step in place over `w`, `m`, `v` (fp32 weights and moments, contiguous, one CUDA device) with
/// gradient `g` (fp32, same length), adding (sum of w^2 before, sum of (w_after - w_before)^2) into `sums`
/// (float64 `[2]` on the same device). Returns false, having touched nothing, where the kernel does not apply
/// (not CUDA, not fp32, kernels unavailable or turned off): the caller then runs the composition.
pub fn adamw_flat_step(
    w: &Tensor,
    m: &Tensor,
    v: &Tensor,
    g: &Tensor,
    step: &AdamWStep,
    sums: &Tensor,
) -> Result<bool> {
    let fit = || [w, m, v, g].iter().all(|t| fits(t, w, Kind::Float));
    let Some(kern) = launch_kernels(w, fit, sums, "adamw_flat_step")? else {
        return Ok(false);
    };
    let n = w.numel() as i64;
    if n == 0 {
        return Ok(true);
    }
    let mut args = [w, m, v, g].map(|t| Arg::Ptr(t.data_ptr() as u64)).to_vec();
    args.extend(step_args(n, step, sums));
    let (grid, block) = elementwise_grid(n);
    kern.launch("adamw_flat_f32", grid, block, &args)?;
    Ok(true)
}

/// Whether `t` is a contiguous `kind` tensor with `like`'s device and length: what a kernel indexing it as `like`
/// needs.
fn fits(t: &Tensor, like: &Tensor, kind: Kind) -> bool {
    t.device() == like.device()
        && t.kind() == kind
        && t.is_contiguous()
        && t.numel() == like.numel()
}

/// The kernels of a fused AdamW launch over `w`, or None (the caller runs the composition, nothing touched) off
/// CUDA, with `SPAR_FUSED_ADAMW=0`, where the tensors do not `fit`, or without kernels. A malformed `sums` (not
/// float64 `[2]` on `w`'s device) is `who`'s error.
fn launch_kernels(
    w: &Tensor,
    fit: impl FnOnce() -> bool,
    sums: &Tensor,
    who: &str,
) -> Result<Option<std::sync::Arc<cuda::Kernels>>> {
    let Device::Cuda(ordinal) = w.device() else {
        return Ok(None);
    };
    if !fused_adamw_enabled() || !cuda::enabled() || !fit() {
        return Ok(None);
    }
    ensure!(
        sums.kind() == Kind::Double && sums.numel() == 2 && sums.device() == w.device(),
        "{who}: sums must be float64 [2] on the weights' device"
    );
    Ok(cuda::kernels(ordinal))
}

/// The arguments every AdamW kernel takes after its pointers: n, the step's numbers as the kernels use them (torch
/// casts each host scalar to float before the elementwise op) and the sums.
fn step_args(n: i64, step: &AdamWStep, sums: &Tensor) -> [Arg; 12] {
    let f = |x: f64| Arg::F32(x as f32);
    [
        Arg::I64(n),
        f(1.0 - step.lr * step.weight_decay),
        f(step.lr * step.weight_decay),
        Arg::I32(i32::from(step.weight_decay != 0.0)),
        f(step.beta1),
        f(1.0 - step.beta1),
        f(step.beta2),
        f(1.0 - step.beta2),
        Arg::F32(inverse_bias2_sqrt(step)),
        f(step.eps),
        f(step.lr / step.bias1),
        Arg::Ptr(sums.data_ptr() as u64),
    ]
}

/// (grid, block) of a grid-stride loop over n elements: 256 threads a block, at most 4096 blocks.
fn elementwise_grid(n: i64) -> (u32, u32) {
    let block = 256u32;
    (
        ((n + block as i64 - 1) / block as i64).min(4096) as u32,
        block,
    )
}

/// The state of one bf16 parameter (or a run of them) in spar_trainer::adamw's compact and packed formats: views
/// that [`adamw_bf16_fused`] and [`adamw_bf16_composition`] update in place.
pub struct Bf16State<'a> {
    /// What the bf16 weight lost in rounding: a bf16 value (compact), or an int8 count of 1/256ths of the
    /// weight's bf16 ulp (packed, see [`comp_scales`]).
    pub comp: &'a Tensor,
    /// The first moment, bf16.
    pub m: &'a Tensor,
    /// The second moment: fp32 (compact), or the high 16 of its 24 kept bits as int16 (packed, see [`pack_v`]).
    pub v: &'a Tensor,
    /// Packed: the low 8 of the second moment's 24 kept bits (uint8).
    pub v_lo: Option<&'a Tensor>,
}

impl Bf16State<'_> {
    fn packed(&self) -> bool {
        self.v_lo.is_some()
    }
}

/// Per element of `w32` (fp32 widenings of bf16 weights): 1/256 of the weight's bf16 ulp, the unit of a packed
/// compensation, and its inverse, both powers of two. The exponent is clamped to [16, 254] so that both stay
/// normal: weights under 2^-111 share the unit of 2^-111.
pub fn comp_scales(w32: &Tensor) -> (Tensor, Tensor) {
    let e = w32
        .view_dtype(Kind::Int)
        .bitwise_right_shift_tensor_scalar(23)
        .bitwise_and(0xff)
        .clamp(16, 254);
    let scale = (&e - 15)
        .bitwise_left_shift_tensor_scalar(23)
        .view_dtype(Kind::Float);
    let inverse = (e.neg() + 269)
        .bitwise_left_shift_tensor_scalar(23)
        .view_dtype(Kind::Float);
    (scale, inverse)
}

/// A packed compensation `q` (int8) of the bf16 weights widened in `w32`, as the fp32 value it stands for (exact).
pub fn unpack_comp(q: &Tensor, w32: &Tensor) -> Tensor {
    q.to_kind(Kind::Float) * comp_scales(w32).0
}

/// What the weights `rounded32` (fp32 widenings of bf16 weights) lost in rounding, `residual` (fp32), as packed
/// compensations: counts of 1/256 of each weight's ulp, rounded to nearest even and clamped to int8 (a residual
/// is at most half an ulp, 128 counts: the clamp loses at most one).
pub fn pack_comp(residual: &Tensor, rounded32: &Tensor) -> Tensor {
    (residual * comp_scales(rounded32).1)
        .round()
        .clamp(-128, 127)
        .to_kind(Kind::Int8)
}

/// Second moments (fp32, non-negative: the sign bit is 0) rounded to the top 24 of their other 31 bits (8
/// exponent and 16 mantissa bits: within 2^-17 relative), as (high 16 bits as int16, low 8 bits as uint8).
pub fn pack_v(v: &Tensor) -> (Tensor, Tensor) {
    let u =
        (v.view_dtype(Kind::Int).to_kind(Kind::Int64) + 0x40).bitwise_right_shift_tensor_scalar(7);
    // The high part reaches 0xff00: int16 holds its bits (unpack_v masks them back).
    let hi = u
        .bitwise_right_shift_tensor_scalar(8)
        .bitwise_and(0xffff)
        .to_kind(Kind::Int16);
    (hi, u.bitwise_and(0xff).to_kind(Kind::Uint8))
}

/// The fp32 second moments that [`pack_v`]'s parts stand for.
pub fn unpack_v(hi: &Tensor, lo: &Tensor) -> Tensor {
    let hi = hi
        .to_kind(Kind::Int64)
        .bitwise_and(0xffff)
        .bitwise_left_shift_tensor_scalar(8);
    hi.bitwise_or_tensor(&lo.to_kind(Kind::Int64))
        .bitwise_left_shift_tensor_scalar(7)
        .to_kind(Kind::Int)
        .view_dtype(Kind::Float)
}

/// One AdamW step of bf16 weights in the compact or packed format as torch ops, the reference of
/// [`adamw_bf16_fused`]: the weight is `w32` (the bf16 weights widened) plus the compensation, the first moment
/// is widened, the second unpacked; [`adamw_step`] steps them in fp32; then the moments are rounded back into
/// `state`, the weight to bf16, and what that rounding lost becomes the compensation. Returns the new bf16
/// weights (the caller writes them into the parameters) and [`adamw_step`]'s two sums.
pub fn adamw_bf16_composition(
    w32: &Tensor,
    g: &Tensor,
    state: &Bf16State,
    step: &AdamWStep,
) -> (Tensor, Tensor, Tensor) {
    let mut weight = if state.packed() {
        w32 + unpack_comp(state.comp, w32)
    } else {
        w32 + state.comp.to_kind(Kind::Float)
    };
    let mut m = state.m.to_kind(Kind::Float);
    let mut v = match state.v_lo {
        Some(lo) => unpack_v(state.v, lo),
        None => state.v.shallow_clone(),
    };
    let (before, delta) = adamw_step(&mut weight, &mut m, &mut v, g, step);
    state.m.shallow_clone().copy_(&m);
    if let Some(lo) = state.v_lo {
        let (hi, low) = pack_v(&v);
        state.v.shallow_clone().copy_(&hi);
        lo.shallow_clone().copy_(&low);
    }
    let rounded = weight.to_kind(Kind::BFloat16);
    let rounded32 = rounded.to_kind(Kind::Float);
    let residual = &weight - &rounded32;
    if state.packed() {
        state
            .comp
            .shallow_clone()
            .copy_(&pack_comp(&residual, &rounded32));
    } else {
        state.comp.shallow_clone().copy_(&residual);
    }
    (rounded, before, delta)
}

/// The fused kernel of [`adamw_bf16_composition`] (the same bits): one step in place over the bf16 weights `w`
/// of one parameter with its gradient `g` (bf16; None: zeros) and `state`, adding the two sums into `sums`
/// (float64 `[2]`). One pass over the elements, no temporaries. Returns false, having touched nothing, where it
/// does not apply (not CUDA, other kinds or layouts, kernels unavailable or `SPAR_FUSED_ADAMW=0`).
pub fn adamw_bf16_fused(
    w: &Tensor,
    g: Option<&Tensor>,
    state: &Bf16State,
    step: &AdamWStep,
    sums: &Tensor,
) -> Result<bool> {
    let (comp_kind, v_kind) = if state.packed() {
        (Kind::Int8, Kind::Int16)
    } else {
        (Kind::BFloat16, Kind::Float)
    };
    let fit = || {
        fits(w, w, Kind::BFloat16)
            && g.is_none_or(|g| fits(g, w, Kind::BFloat16))
            && fits(state.comp, w, comp_kind)
            && fits(state.m, w, Kind::BFloat16)
            && fits(state.v, w, v_kind)
            && state.v_lo.is_none_or(|lo| fits(lo, w, Kind::Uint8))
    };
    let Some(kern) = launch_kernels(w, fit, sums, "adamw_bf16_fused")? else {
        return Ok(false);
    };
    let n = w.numel() as i64;
    if n == 0 {
        return Ok(true);
    }
    let ptr = |t: &Tensor| Arg::Ptr(t.data_ptr() as u64);
    let mut args = vec![
        ptr(w),
        ptr(state.comp),
        Arg::Ptr(g.map_or(0, |g| g.data_ptr() as u64)),
        ptr(state.m),
        ptr(state.v),
    ];
    if let Some(lo) = state.v_lo {
        args.push(ptr(lo));
    }
    args.extend(step_args(n, step, sums));
    let name = if state.packed() {
        "adamw_packed_bf16"
    } else {
        "adamw_compact_bf16"
    };
    let (grid, block) = elementwise_grid(n);
    kern.launch(name, grid, block, &args)?;
    Ok(true)
}
