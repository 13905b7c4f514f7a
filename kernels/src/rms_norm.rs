//! RMSNorm as Qwen3 computes it: `weight * (x_f32 * rsqrt(mean(x_f32^2) + eps)).to(x.dtype)`.
//!
//! The fused kernel (one block per row, NVRTC-compiled at first use) serves inference: it has no backward, so
//! it runs only where autograd is off or nothing requires a gradient. Everything else takes the torch path.

use crate::cuda::{self, grad_enabled};
use anyhow::Result;
use tch::{Kind, Tensor};

/// RMSNorm over the last dimension. Uses the fused CUDA kernel when it applies, the torch composition otherwise.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if let Some(y) = fused(x, weight, eps)? {
        return Ok(y);
    }
    rms_norm_torch(x, weight, eps)
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
    k.launch_rows(
        name,
        rows,
        &[
            x.data_ptr() as u64,
            w.data_ptr() as u64,
            out.data_ptr() as u64,
        ],
        h as i32,
        eps as f32,
    )?;
    Ok(Some(out))
}
