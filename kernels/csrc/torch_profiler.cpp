// The PyTorch profiler (Kineto) for tch: a C ABI over torch::autograd::profiler's enable / disable and
// at::RecordFunction, the calls torch.profiler.profile and torch.profiler.record_function make. tch binds
// neither.
//
// The profiler records on the thread that enables it (torch's thread-local profiler state): every aten op that
// thread issues, the CUDA runtime calls and kernels they cause when CUDA activity is on, and the user ranges
// opened with spar_profiler_range_enter. disableProfiler returns the result; save() writes the Chrome trace JSON
// that torch.profiler's export_chrome_trace writes (open it in Perfetto or chrome://tracing).
//
// Every entry point catches C++ exceptions and reports them through `err` (a NUL-terminated message).
#include "shim_errors.h"
#include <ATen/record_function.h>
#include <torch/csrc/autograd/profiler_kineto.h>

#include <set>
#include <string>

namespace {

using spar_shim::guarded;

namespace prof = torch::profiler::impl;

}  // namespace

extern "C" {

// Starts recording on this thread. cuda: also CUDA kernels, memcpys and runtime calls (CUPTI); record_shapes:
// input shapes of each op; profile_memory: allocator events; with_stack: C++ call stacks of each op.
int spar_profiler_start(int cuda, int record_shapes, int profile_memory, int with_stack, char* err,
                        size_t len) {
  return guarded(err, len, [&] {
    prof::ProfilerConfig config(prof::ProfilerState::KINETO, record_shapes != 0, profile_memory != 0,
                                with_stack != 0, /*with_flops=*/false, /*with_modules=*/false);
    std::set<prof::ActivityType> activities{prof::ActivityType::CPU};
    if (cuda != 0) activities.insert(prof::ActivityType::CUDA);
    torch::autograd::profiler::prepareProfiler(config, activities);
    torch::autograd::profiler::enableProfiler(config, activities);
  });
}

// Stops recording on this thread and writes the Chrome trace to `path` (null: the result is dropped).
int spar_profiler_stop(const char* path, char* err, size_t len) {
  return guarded(err, len, [&] {
    auto result = torch::autograd::profiler::disableProfiler();
    if (path != nullptr && result) result->save(std::string(path));
  });
}

// Whether a profiler records on this thread.
int spar_profiler_enabled() { return prof::profilerEnabled() ? 1 : 0; }

// Opens a named user range (torch.profiler.record_function); null when no profiler would record it. Close it on
// the same thread with spar_profiler_range_exit.
void* spar_profiler_range_enter(const char* name) {
  try {
    auto* rf = new at::RecordFunction(at::RecordScope::USER_SCOPE);
    if (!rf->isActive()) {
      delete rf;
      return nullptr;
    }
    rf->before(std::string_view(name));
    return rf;
  } catch (...) {
    return nullptr;
  }
}

void spar_profiler_range_exit(void* range) {
  if (range == nullptr) return;
  auto* rf = static_cast<at::RecordFunction*>(range);
  try {
    rf->end();
  } catch (...) {
  }
  delete rf;
}

}  // extern "C"
