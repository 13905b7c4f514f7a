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
    let Device::Cuda(ordinal) = w.device() else {
        return Ok(false);
    };
    if !fused_adamw_enabled() || !cuda::enabled() {
        return Ok(false);
    }
    let n = w.numel() as i64;
    for t in [m, v, g] {
        if t.device() != w.device()
            || t.kind() != Kind::Float
            || !t.is_contiguous()
            || t.numel() as i64 != n
        {
            return Ok(false);
        }
    }
    if w.kind() != Kind::Float || !w.is_contiguous() {
        return Ok(false);
    }
    ensure!(
        sums.kind() == Kind::Double && sums.numel() == 2 && sums.device() == w.device(),
        "adamw_flat_step: sums must be float64 [2] on the weights' device"
    );
    let Some(kern) = cuda::kernels(ordinal) else {
        return Ok(false);
    };
    if n == 0 {
        return Ok(true);
    }
    // Torch casts each host scalar to float before the elementwise op.
    let f = |x: f64| x as f32;
    let inv_bc2_sqrt = inverse_bias2_sqrt(step);
    let decay = step.weight_decay != 0.0;
    let block = 256u32;
    let grid = ((n + block as i64 - 1) / block as i64).min(4096) as u32;
    kern.launch(
        "adamw_flat_f32",
        grid,
        block,
        &[
            Arg::Ptr(w.data_ptr() as u64),
            Arg::Ptr(m.data_ptr() as u64),
            Arg::Ptr(v.data_ptr() as u64),
            Arg::Ptr(g.data_ptr() as u64),
            Arg::I64(n),
            Arg::F32(f(1.0 - step.lr * step.weight_decay)),
            Arg::F32(f(step.lr * step.weight_decay)),
            Arg::I32(i32::from(decay)),
            Arg::F32(f(step.beta1)),
            Arg::F32(f(1.0 - step.beta1)),
            Arg::F32(f(step.beta2)),
            Arg::F32(f(1.0 - step.beta2)),
            Arg::F32(inv_bc2_sqrt),
            Arg::F32(f(step.eps)),
            Arg::F32(f(step.lr / step.bias1)),
            Arg::Ptr(sums.data_ptr() as u64),
        ],
    )?;
    Ok(true)
}
