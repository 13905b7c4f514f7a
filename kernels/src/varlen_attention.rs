//! Causal attention of a prefill's packed new tokens over each row's keys where they sit in the slot KV cache,
//! through ATen's FlashAttention-2 varlen kernel (`at::_flash_attention_forward` with `seqused_k`, which tch does
//! not bind; the libtorch shim `csrc/varlen_attention.cpp`).
//!
//! A consultation's prefill appends turns of different lengths to histories in scattered cache slots. Through
//! SDPA that means right-padding the turns to the longest, gathering the rows' keys out of the cache when their
//! slots are not adjacent, and an additive mask (which rules flash attention out): ~15 host ops a layer and a copy
//! of every row's keys. The varlen kernel takes the new tokens packed (no padding), each row's keys in place
//! (its start `slot x width` and its length, in any order), and the causal mask as a flag: one call a layer.

use anyhow::{Result, bail};
#[cfg(spar_torch_ops)]
use std::ffi::{CStr, c_char, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use tch::{Device, Kind, Tensor};

#[cfg(spar_torch_ops)]
unsafe extern "C" {
    #[allow(clippy::too_many_arguments)]
    fn spar_varlen_cached_attention(
        q: *const c_void,
        k: *const c_void,
        v: *const c_void,
        cu_q: *const c_void,
        k_start: *const c_void,
        k_used: *const c_void,
        max_q: i64,
        max_k: i64,
        scale: f64,
        out: *mut *mut c_void,
        err: *mut c_char,
        len: usize,
    ) -> i32;
}

/// Set after the kernel refused a call (a GPU older than Ampere, a torch built without flash attention): the
/// callers' own paths run from then on.
static REFUSED: AtomicBool = AtomicBool::new(false);

/// Whether [`cached_varlen_attention`] can take queries of `kind` on `device` with heads of `d` dimensions: a
/// CUDA device, bf16 or fp16, `d` a multiple of 8 up to 256, a build with the libtorch shim, the kernel not
/// refused earlier, and `SPAR_VARLEN_PREFILL` not `0`.
pub fn applies(device: Device, kind: Kind, d: i64) -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on = *ON.get_or_init(|| std::env::var("SPAR_VARLEN_PREFILL").as_deref() != Ok("0"));
    on && cfg!(spar_torch_ops)
        && device.is_cuda()
        && matches!(kind, Kind::BFloat16 | Kind::Half)
        && d % 8 == 0
        && d <= 256
        && !REFUSED.load(Ordering::Relaxed)
}

/// Causal attention of `q: [N, nh, d]` (the new tokens of `b` rows, packed: row `i`'s are
/// `cu_q[i]..cu_q[i + 1]`) over keys and values `[slots, width, nkv, d]` (a slot cache layer, contiguous), row `i`
/// reading the `k_used[i]` positions from flat position `k_start[i]` (its physical slot x `width`); the mask is
/// bottom-right aligned, so row `i`'s new token `j` sees its first `k_used[i] - t_i + j + 1` keys (the new
/// tokens' keys must be in the cache already). `cu_q`, `k_start`: `[b + 1]` int32; `k_used`: `[b]` int32;
/// `max_q`, `max_k`: the largest `t_i` and `k_used[i]`. Scale `1 / sqrt(d)`. Returns `[N, nh, d]`, or None where
/// the kernel does not apply ([`applies`]) or refuses the call (said once on stderr; it then stays off).
#[allow(clippy::too_many_arguments)]
pub fn cached_varlen_attention(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    cu_q: &Tensor,
    k_start: &Tensor,
    k_used: &Tensor,
    max_q: i64,
    max_k: i64,
) -> Result<Option<Tensor>> {
    let (qs, cs) = (q.size(), k_cache.size());
    let [_, nh, d] = qs.as_slice() else {
        bail!("varlen attention: queries must be [N, nh, d], got {qs:?}");
    };
    let [_, _, nkv, cd] = cs.as_slice() else {
        bail!("varlen attention: the cache must be [slots, width, nkv, d], got {cs:?}");
    };
    if cd != d || v_cache.size() != cs || nkv <= &0 || nh % nkv != 0 {
        bail!(
            "varlen attention: {nh} query heads of {d} over a cache of {cs:?} (values {:?})",
            v_cache.size()
        );
    }
    if !applies(q.device(), q.kind(), *d) || k_cache.kind() != q.kind() {
        return Ok(None);
    }
    let rows = cs[0] * cs[1];
    let k = k_cache.f_view([rows, *nkv, *d])?;
    let v = v_cache.f_view([rows, *nkv, *d])?;
    call(q, &k, &v, cu_q, k_start, k_used, max_q, max_k, *d)
}

#[cfg(spar_torch_ops)]
#[allow(clippy::too_many_arguments)]
fn call(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_q: &Tensor,
    k_start: &Tensor,
    k_used: &Tensor,
    max_q: i64,
    max_k: i64,
    d: i64,
) -> Result<Option<Tensor>> {
    let mut out = std::ptr::null_mut::<c_void>();
    let mut err = vec![0 as c_char; 2048];
    // SAFETY: the tensors are live `at::Tensor*` handles for the duration of the call; the shim writes one new
    // heap tensor (owned by us from here) or an error message, and catches every C++ exception.
    let rc = unsafe {
        spar_varlen_cached_attention(
            q.as_ptr() as *const c_void,
            k.as_ptr() as *const c_void,
            v.as_ptr() as *const c_void,
            cu_q.as_ptr() as *const c_void,
            k_start.as_ptr() as *const c_void,
            k_used.as_ptr() as *const c_void,
            max_q,
            max_k,
            1.0 / (d as f64).sqrt(),
            &mut out,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if rc != 0 {
        // SAFETY: the shim NUL-terminates its message inside the buffer.
        let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy();
        if !REFUSED.swap(true, Ordering::Relaxed) {
            eprintln!("spar-kernels: flash varlen attention refused, prefill takes SDPA ({msg})");
        }
        return Ok(None);
    }
    // SAFETY: a fresh `new at::Tensor` handed over to tch, which deletes it on drop.
    Ok(Some(unsafe { Tensor::from_ptr(out as *mut _) }))
}

#[cfg(not(spar_torch_ops))]
#[allow(clippy::too_many_arguments)]
fn call(
    _: &Tensor,
    _: &Tensor,
    _: &Tensor,
    _: &Tensor,
    _: &Tensor,
    _: &Tensor,
    _: i64,
    _: i64,
    _: i64,
) -> Result<Option<Tensor>> {
    Ok(None)
}
