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
/// does not apply (then nothing was written). Heads of 32, 64, 128 or 256 run a warp a head; others a block.
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
    qk_norm_rope_store_with(
        qkv,
        (q_norm, k_norm),
        (cos, sin),
        write_at,
        (k_cache, v_cache),
        heads,
        eps,
        true,
    )
}

/// [`qk_norm_rope_store`] with the kernel chosen: a warp a head where the head size allows (`per_warp`), else a
/// block a head (the reference the warp kernel is tested against).
#[allow(clippy::too_many_arguments)]
pub fn qk_norm_rope_store_with(
    qkv: &Tensor,
    (q_norm, k_norm): (&Tensor, &Tensor),
    (cos, sin): (&Tensor, &Tensor),
    write_at: &Tensor,
    (k_cache, v_cache): (&Tensor, &Tensor),
    heads: (i64, i64, i64),
    eps: f64,
    per_warp: bool,
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
    let p = |t: &Tensor| Arg::Ptr(t.data_ptr() as u64);
    let mut args = vec![
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
    ];
    // The warp kernel loads E elements a lane as one vector (up to 16 bytes).
    let aligned = [qkv, q_norm, k_norm, cos, sin]
        .iter()
        .all(|t| (t.data_ptr() as usize).is_multiple_of(16));
    let items = r * (nh + nkv);
    if per_warp && [32, 64, 128, 256].contains(&d) && aligned {
        args.extend([Arg::I32(r as i32), Arg::F32(eps as f32)]);
        // Four warps (heads) a block.
        let grid = ((items + 3) / 4) as u32;
        kern.launch(
            &format!("qk_norm_rope_store_warp_{suffix}_d{d}"),
            grid,
            128,
            &args,
        )?;
    } else {
        args.extend([Arg::I32(d as i32), Arg::F32(eps as f32)]);
        // A thread per element of the head: 256-thread blocks left half of them idle on heads of 128.
        let block = (d as u32).div_ceil(32) * 32;
        kern.launch(
            &format!("qk_norm_rope_store_{suffix}"),
            items as u32,
            block,
            &args,
        )?;
    }
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
        // A warp a row (16-byte pieces) where the row's size has a variant and every pointer is 16-byte aligned.
        let aligned = [x, y, w, &s, &n]
            .iter()
            .all(|t| (t.data_ptr() as usize).is_multiple_of(16));
        // The warp kernel takes the row count (its row size is in its name), the block kernel the row size.
        let (name, block, size) =
            if add_rms_norm_per_warp() && [256, 512, 1024, 2048].contains(&h) && aligned {
                (format!("add_rms_norm_warp_{suffix}_h{h}"), 32, rows as i32)
            } else {
                (format!("add_rms_norm_{suffix}"), 256, h as i32)
            };
        kern.launch(
            &name,
            rows,
            block,
            &[
                p(x),
                p(y),
                p(w),
                p(&s),
                p(&n),
                Arg::I32(size),
                Arg::F32(eps as f32),
            ],
        )?;
        return Ok((s, n));
    }
    let s = x.f_add(y)?;
    let n = crate::rms_norm(&s, w, eps)?;
    Ok((s, n))
}

/// Whether [`add_rms_norm`] runs a warp a row where it can (`SPAR_ADD_RMS_NORM=block` keeps a block a row, to
/// compare).
fn add_rms_norm_per_warp() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("SPAR_ADD_RMS_NORM").as_deref() != Ok("block"))
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

/// The most rows [`skinny_linear`] takes: from 3 rows on cuBLAS was faster on an H100 (every row is another
/// read of `x` per weight vector; docs/benchmarks.md).
pub const SKINNY_MAX_ROWS: i64 = 2;

/// The kernels of [`skinny_linear`], by variant, dtype and row count (for the module's function table).
pub(crate) const SKINNY_LINEAR_KERNELS: [&str; 8] = [
    "skinny_linear_f32_r1",
    "skinny_linear_f32_r2",
    "skinny_linear_bf16_r1",
    "skinny_linear_bf16_r2",
    "skinny_linear_early_f32_r1",
    "skinny_linear_early_f32_r2",
    "skinny_linear_early_bf16_r1",
    "skinny_linear_early_bf16_r2",
];

/// `x W^T` without bias (`x: [.., k]`, `w: [n, k]`, as `Tensor::linear`) for at most [`SKINNY_MAX_ROWS`] rows of
/// `x`: one warp per output column streams its row of `w` at close to the memory bandwidth, where cuBLAS leaves
/// most SMs idle on so few rows (a decode step at batch 1 is such products and little else). Returns None where
/// it does not apply (not CUDA under no-grad, not fp32 / bf16, more rows, `k` not a multiple of 16 bytes,
/// misaligned or non-contiguous operands, or more rows than `SPAR_SKINNY_LINEAR` allows: see
/// [`skinny_linear_max_rows`]); [`linear`] then runs `Tensor::linear`.
/// Only the summation order differs from cuBLAS (fp32 accumulation, one rounding to the dtype).
pub fn skinny_linear(x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    skinny_linear_as(x, w, None)
}

/// [`skinny_linear`] with the variant chosen: `early_weights` launches `skinny_linear_early_*`, which loads its
/// first weights before the programmatic-dependent-launch wait (what a PDL launch runs), instead of the plain
/// kernel. Without PDL both compute the same sums in the same order: the GPU tests compare them bit for bit.
pub fn skinny_linear_with(x: &Tensor, w: &Tensor, early_weights: bool) -> Result<Option<Tensor>> {
    skinny_linear_as(x, w, Some(early_weights))
}

/// `early_weights`: None picks by the device's launch mode (the early variant where PDL is on).
fn skinny_linear_as(x: &Tensor, w: &Tensor, early_weights: Option<bool>) -> Result<Option<Tensor>> {
    let Some((ordinal, suffix)) = fused_target(&[x, w])? else {
        return Ok(None);
    };
    let (ws, xs) = (w.size(), x.size());
    let (Some(&k), [n, wk]) = (xs.last(), ws.as_slice()) else {
        return Ok(None);
    };
    let (n, elt) = (*n, x.kind().elt_size_in_bytes() as i64);
    let rows = if k > 0 { x.numel() as i64 / k } else { 0 };
    let aligned = |t: &Tensor| (t.data_ptr() as usize).is_multiple_of(16);
    if *wk != k
        || k == 0
        || n == 0
        || !((k * elt) as u64).is_multiple_of(16)
        || !(1..=skinny_linear_max_rows()).contains(&rows)
        || n > i32::MAX as i64
        || k > i32::MAX as i64
        || !aligned(x)
        || !aligned(w)
    {
        return Ok(None);
    }
    let Some(kern) = cuda::kernels(ordinal) else {
        return Ok(None);
    };
    let mut out_size = xs.clone();
    *out_size.last_mut().expect("non-empty shape") = n;
    let y = Tensor::f_empty(out_size.as_slice(), (x.kind(), x.device()))?;
    let p = |t: &Tensor| Arg::Ptr(t.data_ptr() as u64);
    // SL_WARPS (4) columns a 128-thread block, a warp each.
    let variant = if early_weights.unwrap_or_else(|| kern.pdl() && early_weights_allowed()) {
        "early_"
    } else {
        ""
    };
    kern.launch(
        &format!("skinny_linear_{variant}{suffix}_r{rows}"),
        (n as u64).div_ceil(4) as u32,
        128,
        &[p(x), p(w), p(&y), Arg::I32(n as i32), Arg::I32(k as i32)],
    )?;
    Ok(Some(y))
}

/// Whether a PDL run takes the early-weights skinny kernels (`SPAR_SKINNY_EARLY=0`: the plain ones, to measure
/// what loading before the wait gains).
fn early_weights_allowed() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("SPAR_SKINNY_EARLY").map_or(true, |v| v != "0"))
}

/// `x W^T` without bias: [`skinny_linear`] where it applies, `Tensor::linear` otherwise.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    match skinny_linear(x, w)? {
        Some(y) => Ok(y),
        None => Ok(x.f_linear(w, None::<Tensor>)?),
    }
}

/// The most rows [`skinny_linear`] takes in this process: [`SKINNY_MAX_ROWS`], or `SPAR_SKINNY_LINEAR=N` (fewer;
/// 0 turns the kernel off: cuBLAS for every decode projection), for comparisons.
pub fn skinny_linear_max_rows() -> i64 {
    static MAX: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        std::env::var("SPAR_SKINNY_LINEAR")
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
            .map_or(SKINNY_MAX_ROWS, |n| n.clamp(0, SKINNY_MAX_ROWS))
    })
}

/// Attention of one query position per row over the KV cache, for decode: `q: [r, nh, d]`, caches
/// `[rows >= r, width, nkv, d]` (graph row `j` reads slot `j`), `key_len: [r]` int64 (row `j` attends to its first
/// `key_len[j]` positions: at least 1, at most `max_keys`), scale `1 / sqrt(d)`. Returns `[r, nh, d]`, or None
/// where the kernel does not apply (not CUDA / fp32 / bf16, `d` not 32, 64, 128 or 256, `nh` not a multiple of
/// `nkv`, or `SPAR_DECODE_ATTENTION=sdpa`); the caller then runs SDPA with a key mask, which computes the same.
/// bf16 caches with heads of 64 or 128 stream through shared memory with asynchronous copies; other shapes,
/// and every shape under `SPAR_DECODE_ATTENTION=registers`, through registers. `SPAR_DECODE_ATTENTION=halves`
/// picks [`DecodeAttentionKernel::Halves`] where it applies.
/// Few rows over many keys split the keys over several blocks (split-K) so that the whole GPU streams the cache
/// ([`pick_splits`]: about 256 blocks, or the least wave-time where that overflows the device's resident blocks).
///
/// With `arrivals` the keys' splits merge inside the attention kernel (the last split to finish merges them)
/// instead of in a second kernel: a zeroed int32 tensor of at least [`decode_attention_arrivals`] elements on the
/// device, which the call uses up (zero it again before reusing it; a decode step zeroes one tensor for all its
/// layers, one memset instead of a merge kernel a layer). `SPAR_DECODE_ATTENTION_MERGE=kernel` ignores it.
pub fn decode_attention(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    key_len: &Tensor,
    nkv: i64,
    max_keys: i64,
    arrivals: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    let kernel = match attention_mode() {
        AttentionMode::Registers => DecodeAttentionKernel::Registers,
        AttentionMode::Halves => DecodeAttentionKernel::Halves,
        AttentionMode::Auto | AttentionMode::Sdpa => DecodeAttentionKernel::Async,
    };
    attention(
        q,
        k_cache,
        v_cache,
        key_len,
        nkv,
        max_keys,
        None,
        kernel,
        arrivals.filter(|_| merge_in_kernel()),
    )
}

/// The arrival counters [`decode_attention`] uses for `r` rows of `nh` query heads over `nkv` KV
/// heads: one per (row, KV head, group of query heads a block serves).
pub fn decode_attention_arrivals(r: i64, nh: i64, nkv: i64) -> i64 {
    if nkv <= 0 {
        return 0;
    }
    let n_rep = (nh / nkv).max(1);
    r * nkv * (n_rep / heads_per_block(n_rep))
}

/// Whether split decode attention merges in the attention kernel (`SPAR_DECODE_ATTENTION_MERGE=kernel`: no).
fn merge_in_kernel() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("SPAR_DECODE_ATTENTION_MERGE").as_deref() != Ok("kernel"))
}

/// Which of the decode attention kernels to prefer; each falls back to the next simpler one where it does not
/// apply (Halves to Async, Async to Registers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeAttentionKernel {
    /// Each warp streams its keys straight into registers (every dtype and head size).
    Registers,
    /// The block copies tiles of keys and values into shared memory with `cp.async`, two tiles in flight, and
    /// each warp folds one key at a time over its 32 lanes (bf16, head size 64 or 128).
    Async,
    /// Async's copies, with each warp folding two keys at a time, a half-warp each, in two online softmaxes
    /// merged at the end: ~40% fewer instructions a key where those bound the kernel (many rows over short
    /// histories). Not for four query heads a block at head size 128 (it would spill registers).
    Halves,
}

/// [`decode_attention`] with the keys split over exactly `splits` blocks per (row, KV head, head group), through
/// `kernel` where it applies (else the simpler one); the splits merge in the attention kernel with `arrivals`
/// (as in [`decode_attention`]), else in a second kernel.
#[allow(clippy::too_many_arguments)]
pub fn decode_attention_split(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    key_len: &Tensor,
    nkv: i64,
    max_keys: i64,
    splits: i64,
    kernel: DecodeAttentionKernel,
    arrivals: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    if splits < 1 {
        return Ok(None);
    }
    attention(
        q,
        k_cache,
        v_cache,
        key_len,
        nkv,
        max_keys,
        Some(splits),
        kernel,
        arrivals,
    )
}

/// The decode attention kernels with `splits` key splits, or as many as [`pick_splits`] says (None).
#[allow(clippy::too_many_arguments)]
fn attention(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    key_len: &Tensor,
    nkv: i64,
    max_keys: i64,
    splits: Option<i64>,
    kernel: DecodeAttentionKernel,
    arrivals: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    let Some((ordinal, suffix)) = fused_target(&[q, k_cache, v_cache])? else {
        return Ok(None);
    };
    let (qs, cs) = (q.size(), k_cache.size());
    let (r, nh, d) = match qs.as_slice() {
        [r, nh, d] => (*r, *nh, *d),
        _ => return Ok(None),
    };
    if attention_mode() == AttentionMode::Sdpa
        || cs.len() != 4
        || cs[0] < r
        || cs[2] != nkv
        || cs[3] != d
        || v_cache.size() != cs
        || nkv <= 0
        || nh % nkv != 0
        || ![32, 64, 128, 256].contains(&d)
        || key_len.kind() != Kind::Int64
        || !key_len.is_contiguous()
        || key_len.numel() as i64 != r
        || key_len.device() != q.device()
        || max_keys < 1
        || max_keys > cs[1]
    {
        return Ok(None);
    }
    let Some(kern) = cuda::kernels(ordinal) else {
        return Ok(None);
    };
    let out = q.f_empty_like()?;
    let heads = heads_per_block(nh / nkv);
    let chunks = nh / nkv / heads;
    // cp.async copies 16-byte pieces: the caches must be 16-byte aligned (rows are, at 2 d bytes).
    let aligned = [k_cache, v_cache]
        .iter()
        .all(|t| (t.data_ptr() as usize).is_multiple_of(16));
    let name = attention_kernel_name(kernel, suffix, d, heads, aligned);
    let splits = match splits {
        Some(n) => n,
        None => auto_splits(&kern, &name, r * nkv * chunks, max_keys),
    };
    // Each split a whole number of the block's 32-key strides (8 warps x 4 keys; the cp.async tile).
    let span = ((max_keys + splits - 1) / splits + 31) / 32 * 32;
    let splits = (max_keys + span - 1) / span;
    let (ws_acc, ws_ml) = if splits > 1 {
        let f32_on = (Kind::Float, q.device());
        (
            Some(Tensor::f_empty([r, nh, splits, d], f32_on)?),
            Some(Tensor::f_empty([r, nh, splits, 2], f32_on)?),
        )
    } else {
        (None, None)
    };
    let p = |t: &Tensor| Arg::Ptr(t.data_ptr() as u64);
    let ws = |t: &Option<Tensor>| Arg::Ptr(t.as_ref().map_or(0, |t| t.data_ptr() as u64));
    let arrivals = arrivals.filter(|a| {
        splits > 1
            && a.kind() == Kind::Int
            && a.device() == q.device()
            && a.is_contiguous()
            && a.numel() as i64 >= decode_attention_arrivals(r, nh, nkv)
    });
    kern.launch(
        &name,
        (r * nkv * chunks * splits) as u32,
        256,
        &[
            p(q),
            p(k_cache),
            p(v_cache),
            p(key_len),
            p(&out),
            Arg::I32(nh as i32),
            Arg::I32(nkv as i32),
            Arg::I32(cs[1] as i32),
            Arg::F32(1.0 / (d as f32).sqrt()),
            Arg::I32(splits as i32),
            Arg::I32(span as i32),
            ws(&ws_acc),
            ws(&ws_ml),
            Arg::Ptr(arrivals.map_or(0, |a| a.data_ptr() as u64)),
        ],
    )?;
    if let (Some(acc), Some(ml), None) = (&ws_acc, &ws_ml, arrivals) {
        kern.launch(
            &format!("decode_attention_combine_{suffix}"),
            (r * nh) as u32,
            d as u32,
            &[
                p(acc),
                p(ml),
                p(&out),
                Arg::I32(splits as i32),
                Arg::I32(d as i32),
            ],
        )?;
    }
    Ok(Some(out))
}

/// The kernel of the module that runs `kernel` for caches of dtype `suffix` (`f32` / `bf16`), heads of `d` and
/// `heads` query heads a block; `aligned`: both caches 16-byte aligned (cp.async copies 16-byte pieces).
fn attention_kernel_name(
    kernel: DecodeAttentionKernel,
    suffix: &str,
    d: i64,
    heads: i64,
    aligned: bool,
) -> String {
    let copies = kernel != DecodeAttentionKernel::Registers
        && suffix == "bf16"
        && (d == 64 || d == 128)
        && aligned;
    if copies && kernel == DecodeAttentionKernel::Halves && !(d == 128 && heads == 4) {
        format!("decode_attention_halves_bf16_d{d}_h{heads}")
    } else if copies {
        format!("decode_attention_async_bf16_d{d}_h{heads}")
    } else {
        format!("decode_attention_{suffix}_d{d}_h{heads}")
    }
}

/// Every kernel name [`attention_kernel_name`] can return (the module must define each).
#[cfg(test)]
pub(crate) fn attention_kernel_names() -> Vec<String> {
    let mut names = Vec::new();
    for kernel in [
        DecodeAttentionKernel::Registers,
        DecodeAttentionKernel::Async,
        DecodeAttentionKernel::Halves,
    ] {
        for suffix in ["f32", "bf16"] {
            for d in [32, 64, 128, 256] {
                for heads in [1, 2, 4] {
                    for aligned in [true, false] {
                        names.push(attention_kernel_name(kernel, suffix, d, heads, aligned));
                    }
                }
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

/// Key splits of a decode attention of `blocks` blocks a split (rows x KV heads x head groups) over at most
/// `max_keys` keys with kernel `name`: [`pick_splits`] over the device's resident blocks
/// (`SPAR_DECODE_ATTENTION_BLOCKS=n` aims at `n` blocks whatever the device); never a split of fewer than 64 keys.
fn auto_splits(kern: &cuda::Kernels, name: &str, blocks: i64, max_keys: i64) -> i64 {
    if let Some(target) = split_target_blocks() {
        return splits_for_target(blocks, target, max_keys);
    }
    let resident = kern.resident_blocks(name, 256).map_or(i64::MAX, i64::from);
    pick_splits(blocks, resident, max_keys)
}

/// About `target` blocks: ceil(target / blocks) splits, at most one per 64 keys.
fn splits_for_target(blocks: i64, target: i64, max_keys: i64) -> i64 {
    let max_splits = ((max_keys + 63) / 64).max(1);
    ((target + blocks - 1) / blocks.max(1)).clamp(1, max_splits)
}

/// The key splits for a grid of `blocks` blocks a split over `max_keys` keys on a device that runs `resident`
/// blocks at once. Enough splits for about 256 blocks (two an SM of an H100: more splits measured no faster, each
/// costs a merge; docs/benchmarks.md, 2026-12-07), unless that grid overflows one wave: the grid then runs in
/// waves of `resident` blocks, each block walking 1 / s of the keys, so the time goes as
/// ceil(blocks x s / resident) / s, and the fewest splits with the least of it win (512 blocks on 396 resident:
/// 1.3 waves unsplit, two waves' time; three splits, 3.9 waves of a third of the keys: 1.33).
pub fn pick_splits(blocks: i64, resident: i64, max_keys: i64) -> i64 {
    let (blocks, resident) = (blocks.max(1), resident.max(1));
    let by_target = splits_for_target(blocks, SPLIT_TARGET_BLOCKS.min(resident), max_keys);
    if blocks * by_target <= resident {
        return by_target;
    }
    let max_splits = ((max_keys + 63) / 64).max(1);
    let waves = |s: i64| (blocks * s + resident - 1) / resident;
    // Compare waves / s as fractions: s1 beats s0 when waves(s1) s0 < waves(s0) s1.
    (1..=max_splits).fold(1, |best, s| {
        if waves(s) * best < waves(best) * s {
            s
        } else {
            best
        }
    })
}

/// The grid size the split rule aims for where it fits the device (two blocks an SM of an H100).
const SPLIT_TARGET_BLOCKS: i64 = 256;

/// `SPAR_DECODE_ATTENTION_BLOCKS`: the grid size the split rule of before aimed for, a tuning knob; unset, the
/// splits follow the device's occupancy.
fn split_target_blocks() -> Option<i64> {
    static TARGET: std::sync::OnceLock<Option<i64>> = std::sync::OnceLock::new();
    *TARGET.get_or_init(|| {
        std::env::var("SPAR_DECODE_ATTENTION_BLOCKS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|v| *v > 0)
    })
}

/// Query heads one block serves: the largest of 4, 2, 1 that divides the heads sharing a KV head (no idle lanes).
fn heads_per_block(n_rep: i64) -> i64 {
    [4, 2, 1].into_iter().find(|h| n_rep % h == 0).unwrap_or(1)
}

/// Greedy choice of every row of `logits: [r, v]` (CUDA, fp32 or bf16, contiguous) written into `out: [2, r]`
/// float64: row `i`'s token id (the first maximum, as `argmax`) at `out[0][i]`, its log-prob under
/// `log_softmax` in fp32 at `out[1][i]`. Ids below 2^53 are exact in f64, so one host copy carries both. Returns
/// false (nothing written) where the kernel does not apply.
pub fn greedy_pick_into(logits: &Tensor, out: &Tensor) -> Result<bool> {
    let Some((ordinal, suffix)) = fused_target(&[logits])? else {
        return Ok(false);
    };
    let (r, v) = match logits.size().as_slice() {
        [r, v] => (*r, *v),
        _ => return Ok(false),
    };
    if r == 0
        || v == 0
        || out.kind() != Kind::Double
        || out.size() != [2, r]
        || !out.is_contiguous()
        || out.device() != logits.device()
    {
        return Ok(false);
    }
    let Some(kern) = cuda::kernels(ordinal) else {
        return Ok(false);
    };
    // Each row split over `parts` blocks, then a merge: few rows spread over the SMs; many rows split so that the
    // grid fills the device's resident blocks (a block a row read a 64-row batch's 19 MB of logits with 64 blocks,
    // each thread's loads one after another: 73 us a step on an H100).
    let parts = if r < 32 {
        (128 / r).clamp(2, 32)
    } else {
        parts_to_fill(&kern, &format!("greedy_pick_part_{suffix}"), r).clamp(1, 32)
    };
    if parts > 1 {
        let ws = Tensor::f_empty([r, parts, 3], (Kind::Float, logits.device()))?;
        kern.launch(
            &format!("greedy_pick_part_{suffix}"),
            (r * parts) as u32,
            256,
            &[
                Arg::Ptr(logits.data_ptr() as u64),
                Arg::I32(v as i32),
                Arg::I32(parts as i32),
                Arg::Ptr(ws.data_ptr() as u64),
            ],
        )?;
        kern.launch(
            "greedy_pick_merge",
            r as u32,
            32,
            &[
                Arg::Ptr(ws.data_ptr() as u64),
                Arg::I32(parts as i32),
                Arg::Ptr(out.data_ptr() as u64),
            ],
        )?;
        return Ok(true);
    }
    kern.launch(
        &format!("greedy_pick_{suffix}"),
        r as u32,
        1024,
        &[
            Arg::Ptr(logits.data_ptr() as u64),
            Arg::I32(v as i32),
            Arg::Ptr(out.data_ptr() as u64),
        ],
    )?;
    Ok(true)
}

/// Parts a row for `rows` rows of 256-thread blocks of kernel `part` to fill the device's resident blocks (512
/// where the driver cannot say).
fn parts_to_fill(kern: &cuda::Kernels, part: &str, rows: i64) -> i64 {
    kern.resident_blocks(part, 256).map_or(512, i64::from) / rows.max(1)
}

/// Temperature sampling of every row of `logits: [r, v]` (CUDA, fp32 or bf16, contiguous) in one kernel (from 32
/// rows, two: each row split over several blocks, then a block a row walks the part holding the pick), written
/// into `out: [2, r]` float64 as [`greedy_pick_into`] does: the token, then its fp32 log-prob under
/// `log_softmax(logits / tl)`. `params: [3, r]` float32 holds each row's temperature (`<= 0`: greedy), log-prob
/// temperature and uniform in `[0, 1)`; a sampling row takes the first token whose cumulative mass under
/// `softmax(logits / t)` exceeds the uniform times the total (`spar_model::temperature_sampling`'s
/// composition, summed in another order). Returns false (nothing written) where the kernel does not apply or
/// `SPAR_FUSED_SAMPLING=0` turns it off.
pub fn temperature_pick_into(logits: &Tensor, params: &Tensor, out: &Tensor) -> Result<bool> {
    temperature_pick(logits, params, out, None)
}

fn temperature_pick(
    logits: &Tensor,
    params: &Tensor,
    out: &Tensor,
    parts: Option<i64>,
) -> Result<bool> {
    if !fused_sampling_enabled() {
        return Ok(false);
    }
    let Some((ordinal, suffix)) = fused_target(&[logits])? else {
        return Ok(false);
    };
    let (r, v) = match logits.size().as_slice() {
        [r, v] => (*r, *v),
        _ => return Ok(false),
    };
    let fits = |t: &Tensor, kind: Kind, size: [i64; 2]| {
        t.kind() == kind && t.size() == size && t.is_contiguous() && t.device() == logits.device()
    };
    if r == 0 || v == 0 || !fits(params, Kind::Float, [3, r]) || !fits(out, Kind::Double, [2, r]) {
        return Ok(false);
    }
    let Some(kern) = cuda::kernels(ordinal) else {
        return Ok(false);
    };
    let parts = match parts.or_else(sampling_parts_override) {
        Some(p) => p.clamp(1, 32),
        // From 32 rows, split each row so that the grid fills the device's resident blocks.
        None if r >= 32 => {
            parts_to_fill(&kern, &format!("temperature_pick_part_{suffix}"), r).clamp(2, 32)
        }
        None => 1,
    };
    let (x, p, o) = (
        Arg::Ptr(logits.data_ptr() as u64),
        Arg::Ptr(params.data_ptr() as u64),
        Arg::Ptr(out.data_ptr() as u64),
    );
    if parts > 1 {
        let ws = Tensor::f_empty([r, parts, 4], (Kind::Float, logits.device()))?;
        let w = Arg::Ptr(ws.data_ptr() as u64);
        let (v, parts_arg) = (Arg::I32(v as i32), Arg::I32(parts as i32));
        kern.launch(
            &format!("temperature_pick_part_{suffix}"),
            (r * parts) as u32,
            256,
            &[x, v, parts_arg, p, w],
        )?;
        kern.launch(
            &format!("temperature_pick_select_{suffix}"),
            r as u32,
            256,
            &[x, v, parts_arg, p, w, o],
        )?;
        return Ok(true);
    }
    kern.launch(
        &format!("temperature_pick_{suffix}"),
        r as u32,
        1024,
        &[x, Arg::I32(v as i32), p, o],
    )?;
    Ok(true)
}

/// [`temperature_pick_into`] with each row split over `parts` blocks (1: a block a row; at most 32), the choice it
/// makes by itself from 32 rows: the same pick and log-prob summed in another order. For the parity tests.
pub fn temperature_pick_into_parts(
    logits: &Tensor,
    params: &Tensor,
    out: &Tensor,
    parts: i64,
) -> Result<bool> {
    temperature_pick(logits, params, out, Some(parts))
}

/// `SPAR_TEMPERATURE_PICK_PARTS=n`: the temperature pick splits every row over `n` blocks (1: a block a row, the
/// kernel of before, to compare), whatever the rows.
fn sampling_parts_override() -> Option<i64> {
    static PARTS: std::sync::OnceLock<Option<i64>> = std::sync::OnceLock::new();
    *PARTS.get_or_init(|| {
        std::env::var("SPAR_TEMPERATURE_PICK_PARTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|v| *v > 0)
    })
}

/// `SPAR_FUSED_SAMPLING=0` samples through the torch composition instead of [`temperature_pick_into`]'s kernel
/// (the A/B of the decode benches).
pub fn fused_sampling_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("SPAR_FUSED_SAMPLING").map_or(true, |v| v != "0"))
}

/// Which decode attention runs (`SPAR_DECODE_ATTENTION`): `sdpa` (torch, the caller's fallback), `registers`
/// (the register-streaming kernel everywhere), `halves` ([`DecodeAttentionKernel::Halves`] where it applies), or
/// by default the asynchronous-copy kernel where it applies (bf16, head size 64 or 128) and the register kernel
/// elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AttentionMode {
    Sdpa,
    Registers,
    Halves,
    Auto,
}

fn attention_mode() -> AttentionMode {
    static MODE: std::sync::OnceLock<AttentionMode> = std::sync::OnceLock::new();
    *MODE.get_or_init(|| match std::env::var("SPAR_DECODE_ATTENTION").as_deref() {
        Ok("sdpa") => AttentionMode::Sdpa,
        Ok("registers") => AttentionMode::Registers,
        Ok("halves") => AttentionMode::Halves,
        _ => AttentionMode::Auto,
    })
}

#[cfg(test)]
mod tests {
    use super::pick_splits;

    #[test]
    fn splits_fill_whole_waves() {
        // Batch 64 x 8 KV heads on 132 SMs x 4 blocks: one wave, no split.
        assert_eq!(pick_splits(512, 528, 256), 1);
        assert_eq!(pick_splits(512, 528, 4096), 1);
        // The same grid at 3 blocks an SM (1.3 waves unsplit): three splits, 3.9 waves of a third of the keys.
        assert_eq!(pick_splits(512, 396, 256), 3);
        // Few rows: about 256 blocks, at most a split per 64 keys.
        assert_eq!(pick_splits(8, 528, 256), 4);
        assert_eq!(pick_splits(8, 528, 4096), 32);
        assert_eq!(pick_splits(128, 528, 256), 2);
        // A device holding fewer than 256 blocks: one wave of them.
        assert_eq!(pick_splits(8, 128, 4096), 16);
        // Degenerate sizes: one split.
        assert_eq!(pick_splits(1, 1000, 64), 1);
        assert_eq!(pick_splits(1, 1000, 1), 1);
        assert_eq!(pick_splits(0, 0, 0), 1);
    }
}
