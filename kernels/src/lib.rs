//! Fused CUDA kernels via cudarc (NVRTC), each with a torch fallback and a parity test, and CUDA graphs
//! over tch through a small libtorch C++ shim ([`cuda_graph`]).
//!
//! Every op here is a plain function the model calls; it picks the fused kernel only where the kernel is
//! valid (CUDA tensor, no autograd needed, supported dtype, kernel compiled) and otherwise runs the torch
//! composition, which is the reference the kernel is tested against. `SPAR_KERNELS=off` forces the fallbacks.

pub mod cuda;
pub mod cuda_graph;
pub mod cuda_memory;
pub mod decode_ops;
pub mod fixed_address;
pub mod fused_logprob;
pub mod optimizer_ops;
pub mod rms_norm;
pub mod sdpa_backends;
pub mod torch_profiler;
pub mod varlen_attention;

pub use rms_norm::{rms_norm, rms_norm_torch};
