//! The fused LM head + log-softmax + gather + entropy of the libtorch shim (`csrc/fused_logprob.cpp`): a
//! `torch::autograd::Function`, forward and backward chunked over tokens, so the `[tokens x vocab]` logits
//! never exist whole. Its outputs take part in tch's autograd like any op's (`backward`, `autograd.grad`).
//! spar-model's `token_logprobs` module is the API; this is the raw call.

use anyhow::{Result, bail};
#[cfg(spar_torch_ops)]
use std::ffi::{CStr, c_char, c_void};
use tch::Tensor;

#[cfg(spar_torch_ops)]
unsafe extern "C" {
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
/// `targets [N]` int64 on their device, computed `chunk` tokens at a time.
pub fn fused_linear_logprob(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &Tensor,
    temperature: f64,
    chunk: usize,
    entropy: bool,
    argmax: bool,
) -> Result<FusedOut> {
    #[cfg(spar_torch_ops)]
    {
        let flags = i64::from(entropy) | (i64::from(argmax) << 1);
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
        let _ = (hidden, weight, targets, temperature, chunk, entropy, argmax);
        bail!(
            "this build has no fused log-prob shim (libtorch's C++ headers were missing at build time)"
        )
    }
}
