// ProcessGroupNCCL for the C ABI of c10d.cpp. Built with SPAR_WITH_NCCL only when the wheel's NCCL and CUDA
// headers are found (build.rs); otherwise spar_pg_nccl_new reports that NCCL is not compiled in.
#include "shim.h"

#ifdef SPAR_WITH_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cstdint>

extern "C" {

int spar_nccl_compiled() {
#ifdef SPAR_WITH_NCCL
  return 1;
#else
  return 0;
#endif
}

void* spar_pg_nccl_new(void* s, int rank, int size, int64_t timeout_ms, int device, char* err, size_t len) {
#ifdef SPAR_WITH_NCCL
  try {
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = std::chrono::milliseconds(timeout_ms);
    // One GPU per rank, chosen by the caller (LOCAL_RANK): bind it so that NCCL does not guess from the rank.
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(device));
    auto store = c10::make_intrusive<c10d::PrefixStore>("nccl/", static_cast<spar::Store*>(s)->store);
    auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, size, opts);
    pg->setBoundDeviceId(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(device)));
    return new spar::Group{pg};
  } catch (...) {
    spar::report(err, len);
    return nullptr;
  }
#else
  (void)s, (void)rank, (void)size, (void)timeout_ms, (void)device;
  spar::set_err(err, len, "ProcessGroupNCCL is not compiled into this spar (NCCL or CUDA headers were missing at build time)");
  return nullptr;
#endif
}

}  // extern "C"
