// CUDA graphs for tch: a C ABI over libtorch's at::cuda::CUDAGraph (tch binds neither graphs nor streams).
//
// Capture must not run on the legacy default stream (where tch issues all work), so capture_begin moves the
// thread's current torch stream to a pool stream and capture_end moves it back. Torch ops issued through tch
// between the two are recorded into the graph; their allocations come from the graph's private memory pool, so
// the tensors they return stay valid (same addresses) for every replay while the graph lives. Replay launches
// on the current stream, i.e. the default stream outside capture: ordered with all other tch work.
//
// Every entry point catches C++ exceptions and reports them through `err` (a NUL-terminated message).
#include "shim_errors.h"
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <dlfcn.h>

#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>

namespace {

using spar_shim::guarded;
using spar_shim::set_err;

struct SparGraph {
  at::cuda::CUDAGraph graph;
  c10::DeviceIndex device = 0;
  bool capturing = false;
};

void enter_side_stream(c10::DeviceIndex device) {
  c10::cuda::set_device(device);
  // Work already queued on the default stream (static inputs, the KV cache) must be done before the side
  // stream starts; a full sync is the simplest fence and capture is rare.
  c10::cuda::device_synchronize();
  c10::cuda::setCurrentCUDAStream(c10::cuda::getStreamFromPool(false, device));
}

// Ends a capture left open on `stream` (its body failed mid-way) and drops what was recorded. The runtime is
// looked up at run time (libtorch_cuda loaded it) so that this file needs no link against libcudart.
void force_end_capture(cudaStream_t stream) {
  using IsCapturing = cudaError_t (*)(cudaStream_t, cudaStreamCaptureStatus*);
  using EndCapture = cudaError_t (*)(cudaStream_t, cudaGraph_t*);
  using Destroy = cudaError_t (*)(cudaGraph_t);
  auto is_capturing = reinterpret_cast<IsCapturing>(dlsym(RTLD_DEFAULT, "cudaStreamIsCapturing"));
  auto end_capture = reinterpret_cast<EndCapture>(dlsym(RTLD_DEFAULT, "cudaStreamEndCapture"));
  auto destroy = reinterpret_cast<Destroy>(dlsym(RTLD_DEFAULT, "cudaGraphDestroy"));
  if (is_capturing == nullptr || end_capture == nullptr) return;
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (is_capturing(stream, &status) != cudaSuccess || status == cudaStreamCaptureStatusNone) return;
  cudaGraph_t graph = nullptr;
  end_capture(stream, &graph);
  if (graph != nullptr && destroy != nullptr) destroy(graph);
}

void leave_side_stream(c10::DeviceIndex device) {
  c10::cuda::device_synchronize();
  c10::cuda::setCurrentCUDAStream(c10::cuda::getDefaultCUDAStream(device));
}

}  // namespace

extern "C" {

void* spar_cuda_graph_new(char* err, size_t len) {
  SparGraph* g = nullptr;
  guarded(err, len, [&] { g = new SparGraph(); });
  return g;
}

void spar_cuda_graph_drop(void* g) {
  try {
    delete static_cast<SparGraph*>(g);
  } catch (...) {
  }
}

// Runs subsequent torch work of this thread on a pool stream of `device` (warm-up before capture: cuBLAS
// workspaces and lazily initialised kernels must exist before they can be captured).
int spar_cuda_side_stream_enter(int device, char* err, size_t len) {
  return guarded(err, len, [&] { enter_side_stream(static_cast<c10::DeviceIndex>(device)); });
}

int spar_cuda_side_stream_leave(int device, char* err, size_t len) {
  return guarded(err, len, [&] { leave_side_stream(static_cast<c10::DeviceIndex>(device)); });
}

// `pool_a, pool_b`: the memory pool to allocate from, shared with the graph that reported it through
// spar_cuda_graph_pool; {0, 0} gives the graph a private pool.
int spar_cuda_graph_capture_begin(void* gp, int device, unsigned long long pool_a,
                                  unsigned long long pool_b, char* err, size_t len) {
  auto* g = static_cast<SparGraph*>(gp);
  return guarded(err, len, [&] {
    g->device = static_cast<c10::DeviceIndex>(device);
    enter_side_stream(g->device);
    try {
      // Thread-local mode: other threads (a trainer, tests running in parallel) may keep using CUDA while
      // this thread captures; only this thread's unsafe calls are checked.
      g->graph.capture_begin({pool_a, pool_b}, cudaStreamCaptureModeThreadLocal);
    } catch (...) {
      leave_side_stream(g->device);
      throw;
    }
    g->capturing = true;
  });
}

// Ends the capture and instantiates the graph. Also the way out of a capture whose body failed: the stream is
// restored whatever happens, and the error (an invalidated capture) is reported.
int spar_cuda_graph_capture_end(void* gp, char* err, size_t len) {
  auto* g = static_cast<SparGraph*>(gp);
  if (!g->capturing) {
    set_err(err, len, "capture_end without capture_begin");
    return 1;
  }
  g->capturing = false;
  int rc = guarded(err, len, [&] { g->graph.capture_end(); });
  if (rc != 0) {
    try {
      force_end_capture(c10::cuda::getCurrentCUDAStream(g->device).stream());
    } catch (...) {
    }
  }
  char err2[512];
  int rc2 = guarded(err2, sizeof err2, [&] { leave_side_stream(g->device); });
  if (rc == 0 && rc2 != 0) {
    set_err(err, len, err2);
    return 1;
  }
  return rc;
}

// A CUDA event recorded on torch's current stream of `device` now (timing off: a fence, not a clock). The host
// waits on it for the work queued before it without waiting for work queued after it (stream synchronisation
// would wait for both). The runtime's entry points are looked up at run time, as in force_end_capture. Null,
// with the message in `err`, when it fails.
void* spar_cuda_event_record(int device, char* err, size_t len) {
  using Create = cudaError_t (*)(cudaEvent_t*, unsigned int);
  using Record = cudaError_t (*)(cudaEvent_t, cudaStream_t);
  using Destroy = cudaError_t (*)(cudaEvent_t);
  cudaEvent_t out = nullptr;
  guarded(err, len, [&] {
    auto create = reinterpret_cast<Create>(dlsym(RTLD_DEFAULT, "cudaEventCreateWithFlags"));
    auto record = reinterpret_cast<Record>(dlsym(RTLD_DEFAULT, "cudaEventRecord"));
    auto destroy = reinterpret_cast<Destroy>(dlsym(RTLD_DEFAULT, "cudaEventDestroy"));
    if (create == nullptr || record == nullptr || destroy == nullptr)
      throw std::runtime_error("the CUDA runtime's event functions are not loaded");
    // The event must belong to the stream's device (the engine's thread works on that one device).
    if (c10::cuda::current_device() != device) c10::cuda::set_device(static_cast<c10::DeviceIndex>(device));
    cudaEvent_t ev = nullptr;
    if (create(&ev, cudaEventDisableTiming) != cudaSuccess) throw std::runtime_error("cudaEventCreateWithFlags failed");
    auto stream = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device)).stream();
    if (record(ev, stream) != cudaSuccess) {
      destroy(ev);
      throw std::runtime_error("cudaEventRecord failed");
    }
    out = ev;
  });
  return static_cast<void*>(out);
}

int spar_cuda_event_synchronize(void* ev, char* err, size_t len) {
  using Sync = cudaError_t (*)(cudaEvent_t);
  return guarded(err, len, [&] {
    auto sync = reinterpret_cast<Sync>(dlsym(RTLD_DEFAULT, "cudaEventSynchronize"));
    if (sync == nullptr) throw std::runtime_error("cudaEventSynchronize is not loaded");
    if (sync(static_cast<cudaEvent_t>(ev)) != cudaSuccess) throw std::runtime_error("cudaEventSynchronize failed");
  });
}

void spar_cuda_event_drop(void* ev) {
  using Destroy = cudaError_t (*)(cudaEvent_t);
  auto destroy = reinterpret_cast<Destroy>(dlsym(RTLD_DEFAULT, "cudaEventDestroy"));
  if (destroy != nullptr && ev != nullptr) destroy(static_cast<cudaEvent_t>(ev));
}

// The raw cudaStream_t torch issues work on for `device` right now (null: the legacy default stream). Kernels
// launched outside torch (NVRTC) go there so that they are ordered with torch's work and can be captured.
void* spar_cuda_current_stream(int device) {
  try {
    return static_cast<void*>(c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device)).stream());
  } catch (...) {
    return nullptr;
  }
}

int spar_cuda_graph_pool(void* gp, unsigned long long* pool_a, unsigned long long* pool_b, char* err,
                         size_t len) {
  auto* g = static_cast<SparGraph*>(gp);
  return guarded(err, len, [&] {
    auto id = g->graph.pool();
    *pool_a = id.first;
    *pool_b = id.second;
  });
}

int spar_cuda_graph_replay(void* gp, char* err, size_t len) {
  auto* g = static_cast<SparGraph*>(gp);
  return guarded(err, len, [&] { g->graph.replay(); });
}

// Peak bytes allocated and reserved by torch's caching allocator on `device` since the last reset (what
// torch.cuda.max_memory_allocated / max_memory_reserved report). Returns 0 on success.
int spar_cuda_peak_memory(int device, long long* allocated, long long* reserved, char* err, size_t len) {
  return guarded(err, len, [&] {
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
    auto agg = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    *allocated = stats.allocated_bytes[agg].peak;
    *reserved = stats.reserved_bytes[agg].peak;
  });
}

// Free and total bytes of `device` as the driver sees them (cudaMemGetInfo, found with dlsym as above: the shim
// does not link the CUDA runtime itself) and the bytes torch's caching allocator has allocated and reserved now
// (reserved - allocated is cached memory torch can hand out again). Returns 0 on success.
int spar_cuda_memory_now(int device, long long* free_bytes, long long* total_bytes, long long* allocated,
                         long long* reserved, char* err, size_t len) {
  return guarded(err, len, [&] {
    using MemGetInfo = cudaError_t (*)(size_t*, size_t*);
    auto mem_get_info = reinterpret_cast<MemGetInfo>(dlsym(RTLD_DEFAULT, "cudaMemGetInfo"));
    if (mem_get_info == nullptr) throw std::runtime_error("cudaMemGetInfo is not loaded in this process");
    // cudaMemGetInfo reads the current device: switch to `device` and back (c10's exported functions; a
    // CUDAGuard would inline CUDA runtime calls this shim does not link).
    auto previous = c10::cuda::current_device();
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(device));
    size_t f = 0, t = 0;
    auto rc = mem_get_info(&f, &t);
    c10::cuda::set_device(previous);
    if (rc != cudaSuccess) {
      throw std::runtime_error("cudaMemGetInfo failed with CUDA error " + std::to_string(static_cast<int>(rc)));
    }
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
    auto agg = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    *free_bytes = static_cast<long long>(f);
    *total_bytes = static_cast<long long>(t);
    *allocated = stats.allocated_bytes[agg].current;
    *reserved = stats.reserved_bytes[agg].current;
  });
}

// Events of torch's caching allocator on `device` since the process started: allocations that failed and were
// retried after freeing its whole cache (each one synchronizes the device), and cudaMalloc / cudaFree calls.
// Returns 0 on success.
int spar_cuda_allocator_events(int device, long long* retries, long long* mallocs, long long* frees, char* err,
                               size_t len) {
  return guarded(err, len, [&] {
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
    *retries = stats.num_alloc_retries;
    *mallocs = stats.num_device_alloc;
    *frees = stats.num_device_free;
  });
}

int spar_cuda_reset_peak_memory(int device, char* err, size_t len) {
  return guarded(err, len, [&] {
    c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(device));
  });
}

// Returns the caching allocator's free blocks to the device, including those of graph pools whose graphs were
// destroyed: a pool's blocks serve no other allocation, and are only freed by this or by a failed malloc's retry,
// which cannot run while a graph is being captured.
int spar_cuda_empty_cache(char* err, size_t len) {
  return guarded(err, len, [&] { c10::cuda::CUDACachingAllocator::emptyCache(); });
}

}  // extern "C"
