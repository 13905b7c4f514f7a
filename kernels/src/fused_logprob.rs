//! The fused LM head + log-softmax + gather + entropy of the libtorch shim (`csrc/fused_logprob.cpp`): a
//! `torch::autograd::Function`, forward and backward chunked over tokens, so the `[tokens x vocab]` logits
//! never exist whole. Its outputs take part in tch's autograd like any op's (`backward`, `autograd.grad`).
//! spar-model's `token_logprobs` module is the API; this is the raw call.
//!
//! On CUDA (float32 / bf16) the per-chunk work after each matmul runs as two NVRTC kernels of this crate
//! (`logprob_kernels.cu`: one pass over a chunk's logits forward, one in-place pass backward), which the shim
//! calls back through [`register_kernels`]; elsewhere, or with `kernels: false`, it is ATen ops.

use anyhow::{Result, bail};
#[cfg(spar_torch_ops)]
use std::ffi::{CStr, c_char, c_void};
use tch::Tensor;

#[cfg(spar_torch_ops)]
type LpFwd = unsafe extern "C" fn(
    i32,
    i32,
    i64,
    i64,
    *const c_void,
    *const c_void,
    f32,
    *mut c_void,
    *mut c_void,
    *mut c_void,
    *mut c_void,
) -> i32;
#[cfg(spar_torch_ops)]
type LpBwd = unsafe extern "C" fn(
    i32,
    i32,
    i64,
    i64,
    *mut c_void,
    *const c_void,
    f32,
    *const c_void,
    *const c_void,
    *const c_void,
    *const c_void,
) -> i32;

#[cfg(spar_torch_ops)]
unsafe extern "C" {
    fn spar_fused_logprob_set_kernels(fwd: Option<LpFwd>, bwd: Option<LpBwd>);
    #[allow(clippy::too_many_arguments)]
    fn spar_fused_linear_logprob(
        hidden: *const c_void,
        weight: *const c_void,
        targets: *const c_void,
        temperature: f64,
        chunk: i64,
        flags: i64,
        logp: *mut *mut c_void,
        entropy: *mut *mut c_void,
        argmax: *mut *mut c_void,
        err: *mut c_char,
        len: usize,
    ) -> i32;
}

/// Whether this build carries the shim (it needs libtorch's C++ headers at build time).
pub fn available() -> bool {
    cfg!(spar_torch_ops)
}

/// Threads per row of the epilogue kernels.
#[cfg(spar_torch_ops)]
const ROW_THREADS: u32 = 512;

/// Runs a kernel callback body: 0 on success, 2 when the kernels are unavailable on `device`, 1 on a failed
/// launch (reported on stderr; the shim turns it into an error). Never unwinds into C++.
#[cfg(spar_torch_ops)]
fn callback(device: i32, name: &str, f: impl FnOnce(&crate::cuda::Kernels) -> Result<()>) -> i32 {
    let run = std::panic::AssertUnwindSafe(|| {
        let Some(k) = crate::cuda::kernels(device as usize) else {
            return 2;
        };
        match f(&k) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("spar-kernels: {name}: {e:#}");
                1
            }
        }
    });
    std::panic::catch_unwind(run).unwrap_or(1)
}

#[cfg(spar_torch_ops)]
fn ptr(p: *const c_void) -> crate::cuda::Arg {
    crate::cuda::Arg::Ptr(p as u64)
}

#[cfg(spar_torch_ops)]
#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn lp_fwd(
    dtype: i32,
    device: i32,
    rows: i64,
    v: i64,
    logits: *const c_void,
    targets: *const c_void,
    temperature: f32,
    logp: *mut c_void,
    lse: *mut c_void,
    ent: *mut c_void,
    argmax: *mut c_void,
) -> i32 {
    let name = if dtype == 1 {
        "lp_fwd_bf16"
    } else {
        "lp_fwd_f32"
    };
    callback(device, name, |k| {
        use crate::cuda::Arg;
        let args = [
            ptr(logits),
            ptr(targets),
            Arg::I32(v as i32),
            Arg::F32(temperature),
            ptr(logp),
            ptr(lse),
            ptr(ent),
            ptr(argmax),
        ];
        k.launch(name, rows as u32, ROW_THREADS, &args)
    })
}

#[cfg(spar_torch_ops)]
#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn lp_bwd(
    dtype: i32,
    device: i32,
    rows: i64,
    v: i64,
    logits: *mut c_void,
    targets: *const c_void,
    temperature: f32,
    lse: *const c_void,
    ent: *const c_void,
    g_lp: *const c_void,
    g_ent: *const c_void,
) -> i32 {
    let name = if dtype == 1 {
        "lp_bwd_bf16"
    } else {
        "lp_bwd_f32"
    };
    callback(device, name, |k| {
        use crate::cuda::Arg;
        let args = [
            ptr(logits),
            ptr(targets),
            Arg::I32(v as i32),
            Arg::F32(temperature),
            ptr(lse),
            ptr(ent),
            ptr(g_lp),
            ptr(g_ent),
        ];
        k.launch(name, rows as u32, ROW_THREADS, &args)
    })
}

/// Hands the CUDA epilogue kernels to the shim (once per process; a no-op without the shim).
pub fn register_kernels() {
    #[cfg(spar_torch_ops)]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: plain function pointers with the shim's C signatures; they live for the whole process.
        ONCE.call_once(|| unsafe { spar_fused_logprob_set_kernels(Some(lp_fwd), Some(lp_bwd)) });
    }
}

/// What [`fused_linear_logprob`] returns.
pub struct FusedOut {
    /// `[N]` float32 (float64 for double inputs): log-prob of each target.
    pub logp: Tensor,
    /// `[N]` entropy of each token's distribution, when asked for (differentiable).
    pub entropy: Option<Tensor>,
    /// `[N]` int64 most likely token, when asked for.
    pub argmax: Option<Tensor>,
}

/// `log_softmax(hidden @ weight^T / temperature)[targets]` for `hidden [N, H]`, `weight [V, H]` (one dtype),
/// `targets [N]` int64 on their device, computed `chunk` tokens at a time. `kernels`: on CUDA, the epilogue
/// kernels of this crate rather than ATen ops (see the module documentation).
#[allow(clippy::too_many_arguments)]
pub fn fused_linear_logprob(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &Tensor,
    temperature: f64,
    chunk: usize,
    entropy: bool,
    argmax: bool,
    kernels: bool,
) -> Result<FusedOut> {
    #[cfg(spar_torch_ops)]
    {
        if kernels && hidden.device().is_cuda() {
            register_kernels();
        }
        let flags = i64::from(entropy) | (i64::from(argmax) << 1) | (i64::from(kernels) << 2);
        let mut out = [std::ptr::null_mut::<c_void>(); 3];
        let mut err = vec![0 as c_char; 2048];
        let [o0, o1, o2] = &mut out;
        // SAFETY: the tensors are live `at::Tensor*` handles for the duration of the call; the shim writes three
        // new heap tensors (owned by us from here) or an error message, and catches every C++ exception.
        let rc = unsafe {
            spar_fused_linear_logprob(
                hidden.as_ptr() as *const c_void,
                weight.as_ptr() as *const c_void,
                targets.as_ptr() as *const c_void,
                temperature,
                chunk.max(1) as i64,
                flags,
                o0,
                o1,
                o2,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if rc != 0 {
            // SAFETY: the shim NUL-terminates its message inside the buffer.
            let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy();
            bail!("fused linear log-prob: {msg}");
        }
        // SAFETY: each pointer is a fresh `new at::Tensor` handed over to tch, which deletes it on drop.
        let [logp, ent, arg] = out.map(|p| unsafe { Tensor::from_ptr(p as *mut _) });
        Ok(FusedOut {
            logp,
            entropy: entropy.then_some(ent),
            argmax: argmax.then_some(arg),
        })
    }
    #[cfg(not(spar_torch_ops))]
    {
        let _ = (
            hidden,
            weight,
            targets,
            temperature,
            chunk,
            entropy,
            argmax,
            kernels,
        );
        bail!(
            "this build has no fused log-prob shim (libtorch's C++ headers were missing at build time)"
        )
    }
}
