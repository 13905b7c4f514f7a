//! Which fused attention kernels the model's `scaled_dot_product_attention` calls may use on CUDA.
//!
//! spar turns torch's cuDNN attention backend off the first time a model lands on a GPU (what
//! `torch.backends.cuda.enable_cudnn_sdp(False)` does in Python); SDPA then picks flash, memory-efficient or
//! math attention as on a GPU without cuDNN. cuDNN's attention builds an execution plan for each new query / key
//! length (~1.2 ms of host time a call on an H100), and the engine's prefills of new consultation turns rarely
//! repeat a shape: on an H100 the plans took 17.6 s of a 23 s round of prefill forwards whose kernels ran for
//! 1.2 s (docs/benchmarks.md, 2026-12-06). `SPAR_SDPA_CUDNN=1` keeps torch's default.
use std::sync::Once;

/// Whether `SPAR_SDPA_CUDNN` asks to keep cuDNN attention (`1`, `on`, `true`).
fn cudnn_requested() -> bool {
    std::env::var("SPAR_SDPA_CUDNN").is_ok_and(|v| matches!(v.as_str(), "1" | "on" | "true"))
}

/// Applies the choice once per process (later calls do nothing); a build without the libtorch shim keeps
/// torch's default, and says so once.
pub fn configure_for_cuda() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if cudnn_requested() {
            return;
        }
        if let Err(e) = spar_kernels::sdpa_backends::set_cudnn_enabled(false) {
            tracing::warn!("cuDNN attention stays on (slow prefill of new turns): {e:#}");
        }
    });
}
