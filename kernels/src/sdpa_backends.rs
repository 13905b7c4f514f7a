//! Which fused kernels torch's `scaled_dot_product_attention` may pick (Python's
//! `torch.backends.cuda.enable_cudnn_sdp`), through the libtorch shim `csrc/sdpa_backends.cpp`: tch binds none
//! of the switches.
//!
//! The switch matters for spar's prefill of new turns: cuDNN's attention builds an execution plan for every new
//! query / key length it meets (~1.2 ms of host time a call on an H100), and a consultation's prefills rarely
//! repeat a shape. Measured on an H100 (docs/benchmarks.md, 2026-12-06): 14,280 cuDNN attention calls of a
//! round's prefill forwards took 17.6 s of host time for 0.43 s of GPU time.

use anyhow::{Result, bail};
#[cfg(spar_torch_ops)]
use std::ffi::c_char;

#[cfg(spar_torch_ops)]
unsafe extern "C" {
    fn spar_sdpa_set_cudnn(enabled: i32, err: *mut c_char, len: usize) -> i32;
    fn spar_sdpa_cudnn_enabled() -> i32;
}

/// Whether this build carries the shim (it needs libtorch's C++ headers at build time).
pub fn available() -> bool {
    cfg!(spar_torch_ops)
}

/// Allows or forbids the cuDNN attention backend for the whole process (`torch.backends.cuda.enable_cudnn_sdp`).
/// Without it, SDPA picks among flash, memory-efficient and math attention as it would on a GPU without cuDNN.
pub fn set_cudnn_enabled(enabled: bool) -> Result<()> {
    #[cfg(spar_torch_ops)]
    {
        let mut err = [0 as c_char; 512];
        // SAFETY: the shim writes at most `err.len()` bytes into `err`, NUL-terminated.
        if unsafe { spar_sdpa_set_cudnn(enabled as i32, err.as_mut_ptr(), err.len()) } != 0 {
            let msg = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) }.to_string_lossy();
            bail!("setting torch's cuDNN attention switch: {msg}");
        }
        Ok(())
    }
    #[cfg(not(spar_torch_ops))]
    {
        let _ = enabled;
        bail!("this build has no libtorch shim (built without libtorch's C++ headers)")
    }
}

/// Whether the cuDNN attention backend is allowed (`torch.backends.cuda.cudnn_sdp_enabled`); true without the
/// shim (torch's default).
pub fn cudnn_enabled() -> bool {
    #[cfg(spar_torch_ops)]
    {
        // SAFETY: reads a flag of torch's global context.
        unsafe { spar_sdpa_cudnn_enabled() != 0 }
    }
    #[cfg(not(spar_torch_ops))]
    {
        true
    }
}
