//! Fused CUDA kernels via cudarc (NVRTC), each with a torch fallback and a parity test
