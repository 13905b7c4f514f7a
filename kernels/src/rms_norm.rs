//! RMSNorm as Qwen3 computes it: `weight * (x_f32 * rsqrt(mean(x_f32^2) + eps)).to(x.dtype)`.
//!
//! The fused kernel (one block per row, NVRTC-compiled at first use) serves inference: it has no backward, so
//! it runs only where autograd is off or nothing requires a gradient. Under autograd on a GPU the normalisation is
//! ATen's fused RMSNorm (`_fused_rms_norm`, one kernel forward and one backward) followed by the weight multiply,
//! instead of the seven-op composition: the H100 profile of a GRPO learn phase showed its backward bound by
//! kernel launches, and this took them from 27.7k to 17.8k a phase and the phase from 1.07 s to 0.68 s
//! (docs/benchmarks.md). `SPAR_ATEN_RMS_NORM=0` keeps the composition. Everything else (the CPU) takes the
//! composition.

use crate::cuda::{self, Arg, grad_enabled};
use anyhow::Result;
use tch::{Kind, Tensor};

/// RMSNorm over the last dimension. Uses the fused CUDA kernel when it applies, ATen's fused normalisation under
/// autograd on a GPU, the torch composition otherwise.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if let Some(y) = fused(x, weight, eps)? {
        return Ok(y);
    }
    if x.device().is_cuda() && aten_enabled() {
        return rms_norm_aten(x, weight, eps);
    }
    rms_norm_torch(x, weight, eps)
}

/// ATen's fused normalisation, then the weight: `weight * _fused_rms_norm(x)`. The normalised rows are rounded
/// to x's dtype before the multiply, as transformers rounds them (a weight passed to the fused op would be
/// applied before that rounding). Differentiable; on the CPU ATen computes it by the same composition.
pub fn rms_norm_aten(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let h = *x.size().last().unwrap_or(&0);
    let (normed, _rstd) = x.f_internal_fused_rms_norm([h], None::<Tensor>, eps)?;
    Ok(weight.f_mul(&normed)?)
}

/// Whether the autograd path on a GPU may use ATen's fused RMSNorm (`SPAR_ATEN_RMS_NORM=0` keeps the composition).
pub fn aten_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("SPAR_ATEN_RMS_NORM").map_or(true, |v| v != "0"))
}

/// The torch composition (differentiable), identical to transformers' `Qwen3RMSNorm.forward`.
pub fn rms_norm_torch(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let kind = x.kind();
    let xf = x.f_to_kind(Kind::Float)?;
    let var = xf
        .f_pow_tensor_scalar(2)?
        .f_mean_dim(-1, true, None::<Kind>)?;
    let normed = xf
        .f_mul(&var.f_add_scalar(eps)?.f_rsqrt()?)?
        .f_to_kind(kind)?;
    Ok(weight.f_mul(&normed)?)
}

/// The fused CUDA kernel, or `None` where it does not apply (CPU, autograd needed, dtype, disabled, no NVRTC).
pub fn fused(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Option<Tensor>> {
    let tch::Device::Cuda(ordinal) = x.device() else {
        return Ok(None);
    };
    let kind = x.kind();
    if !matches!(kind, Kind::Float | Kind::BFloat16)
        || weight.kind() != kind
        || weight.device() != x.device()
    {
        return Ok(None);
    }
    let h = *x.size().last().unwrap_or(&0);
    if weight.size() != [h] || h == 0 || !cuda::enabled() {
        return Ok(None);
    }
    if (x.requires_grad() || weight.requires_grad()) && grad_enabled()? {
        return Ok(None);
    }
    let Some(k) = cuda::kernels(ordinal) else {
        return Ok(None);
    };
    let x = x.f_contiguous()?;
    let w = weight.f_contiguous()?;
    let out = x.f_empty_like()?;
    let rows = (x.numel() as i64 / h) as u32;
    if rows == 0 {
        return Ok(Some(out));
    }
    let name = if kind == Kind::Float {
        "rms_norm_f32"
    } else {
        "rms_norm_bf16"
    };
    // One 256-thread block per row.
    k.launch(
        name,
        rows,
        256,
        &[
            Arg::Ptr(x.data_ptr() as u64),
            Arg::Ptr(w.data_ptr() as u64),
            Arg::Ptr(out.data_ptr() as u64),
            Arg::I32(h as i32),
            Arg::F32(eps as f32),
        ],
    )?;
    Ok(Some(out))
}
