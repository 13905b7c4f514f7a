// Which fused kernels torch's scaled_dot_product_attention may pick: the switches behind Python's
// torch.backends.cuda.enable_cudnn_sdp / cudnn_sdp_enabled, which tch does not bind.
//
// Every entry point catches C++ exceptions and reports them through `err` (a NUL-terminated message).
#include "shim_errors.h"
#include <ATen/Context.h>

extern "C" {

// Allows (enabled != 0) or forbids the cuDNN attention backend for the whole process.
int spar_sdpa_set_cudnn(int enabled, char* err, size_t len) {
  return spar_shim::guarded(err, len, [&] { at::globalContext().setSDPUseCuDNN(enabled != 0); });
}

// Whether the cuDNN attention backend is allowed.
int spar_sdpa_cudnn_enabled() { return at::globalContext().userEnabledCuDNNSDP() ? 1 : 0; }

}  // extern "C"
