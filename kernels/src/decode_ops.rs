//! Fused ops of the decode step (CUDA-graph decode in spar-model), each with its torch composition as the
//! fallback and the reference: per-head q/k RMSNorm + RoPE + KV-cache store, residual add + RMSNorm, and the
//! SwiGLU activation. They run only under no-grad (decode), on CUDA, in fp32 or bf16; kernels launch on torch's
//! current stream, so a CUDA-graph capture records them.

use crate::cuda::{self, Arg};
use anyhow::Result;
use tch::{Device, Kind, Tensor};

/// The kernel name suffix and device ordinal when `tensors` all qualify for the fused kernels.
fn fused_target(tensors: &[&Tensor]) -> Result<Option<(usize, &'static str)>> {
    let first = tensors[0];
    let Device::Cuda(ordinal) = first.device() else {
        return Ok(None);
    };
    let suffix = match first.kind() {
        Kind::Float => "f32",
        Kind::BFloat16 => "bf16",
        _ => return Ok(None),
    };
    if !cuda::enabled() || cuda::grad_enabled()? {
        return Ok(None);
    }
    for t in tensors {
        if t.device() != first.device() || t.kind() != first.kind() || !t.is_contiguous() {
            return Ok(None);
        }
    }
    Ok(Some((ordinal, suffix)))
}

/// Per-head RMSNorm (`q_norm`, `k_norm`, weights `[d]`) and RoPE (`cos`, `sin`: `[r, d]` per row) of the
/// fused projection `qkv: [r, (nh + 2 nkv) * d]` (any leading shape with `r` rows; q heads, then k, then v);
/// k and v are stored at flat row `write_at[i]` (`[r]` int64) of the caches viewed as `[rows, nkv, d]`
/// (contiguous, from their start). Returns the rotated queries `[r, nh, d]`, or None where the fused kernel
/// does not apply (then nothing was written).
#[allow(clippy::too_many_arguments)]
pub fn qk_norm_rope_store(
    qkv: &Tensor,
    q_norm: &Tensor,
    k_norm: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    write_at: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    heads: (i64, i64, i64),
    eps: f64,
) -> Result<Option<Tensor>> {
    let (nh, nkv, d) = heads;
    let Some((ordinal, suffix)) = fused_target(&[qkv, q_norm, k_norm, cos, sin, k_cache, v_cache])?
    else {
        return Ok(None);
    };
    let r = write_at.numel() as i64;
    if d % 2 != 0
        || d > 1024
        || write_at.kind() != Kind::Int64
        || !write_at.is_contiguous()
        || qkv.numel() as i64 != r * (nh + 2 * nkv) * d
        || cos.numel() as i64 != r * d
        || sin.numel() as i64 != r * d
    {
        return Ok(None);
    }
    let Some(kern) = cuda::kernels(ordinal) else {
        return Ok(None);
    };
    let q_out = Tensor::f_empty([r, nh, d], (qkv.kind(), qkv.device()))?;
    let block = if d <= 256 {
        256
    } else {
        (d as u32).div_ceil(32) * 32
    };
    let p = |t: &Tensor| Arg::Ptr(t.data_ptr() as u64);
    kern.launch(
        &format!("qk_norm_rope_store_{suffix}"),
        (r * (nh + nkv)) as u32,
        block,
        &[
            p(qkv),
            p(q_norm),
            p(k_norm),
            p(cos),
            p(sin),
            p(write_at),
            p(&q_out),
            p(k_cache),
            p(v_cache),
            Arg::I32(nh as i32),
            Arg::I32(nkv as i32),
            Arg::I32(d as i32),
            Arg::F32(eps as f32),
        ],
    )?;
    Ok(Some(q_out))
}

/// `s = x + y` and `n = rms_norm(s, w)` over the last dimension, fused where possible (torch otherwise).
pub fn add_rms_norm(x: &Tensor, y: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let h = *x.size().last().unwrap_or(&0);
    if let Some((ordinal, suffix)) = fused_target(&[x, y, w])?
        && x.size() == y.size()
        && w.size() == [h]
        && h > 0
        && let Some(kern) = cuda::kernels(ordinal)
    {
        let s = x.f_empty_like()?;
        let n = x.f_empty_like()?;
        let rows = (x.numel() as i64 / h) as u32;
        let p = |t: &Tensor| Arg::Ptr(t.data_ptr() as u64);
        kern.launch(
            &format!("add_rms_norm_{suffix}"),
            rows,
            256,
            &[
                p(x),
                p(y),
                p(w),
                p(&s),
                p(&n),
                Arg::I32(h as i32),
                Arg::F32(eps as f32),
            ],
        )?;
        return Ok((s, n));
    }
    let s = x.f_add(y)?;
    let n = crate::rms_norm(&s, w, eps)?;
    Ok((s, n))
}

/// `silu(g) * u` for the fused projection `gate_up: [.., 2 I]` (gate columns first): returns `[.., I]`.
/// Fused where possible, torch otherwise.
pub fn silu_mul_packed(gate_up: &Tensor) -> Result<Tensor> {
    let size = gate_up.size();
    let two_i = *size.last().unwrap_or(&0);
    let i = two_i / 2;
    if let Some((ordinal, suffix)) = fused_target(&[gate_up])?
        && two_i % 2 == 0
        && i > 0
        && let Some(kern) = cuda::kernels(ordinal)
    {
        let mut out_size = size.clone();
        *out_size.last_mut().expect("non-empty shape") = i;
        let out = Tensor::f_empty(out_size.as_slice(), (gate_up.kind(), gate_up.device()))?;
        let n = out.numel() as i64;
        if n > 0 {
            let base = gate_up.data_ptr() as u64;
            let elt = gate_up.kind().elt_size_in_bytes() as u64;
            kern.launch(
                &format!("silu_mul_{suffix}"),
                (n as u64).div_ceil(256) as u32,
                256,
                &[
                    Arg::Ptr(base),
                    Arg::Ptr(base + i as u64 * elt),
                    Arg::Ptr(out.data_ptr() as u64),
                    Arg::I64(n),
                    Arg::I32(i as i32),
                    Arg::I32(two_i as i32),
                ],
            )?;
        }
        return Ok(out);
    }
    let g = gate_up.f_narrow(-1, 0, i)?;
    let u = gate_up.f_narrow(-1, i, i)?;
    Ok(g.f_silu()?.f_mul(&u)?)
}
