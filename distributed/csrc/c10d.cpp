// A C ABI over libtorch's own c10d (tch binds none of it): TCPStore (+ PrefixStore) for rendezvous and
// ProcessGroupGloo for collectives on CPU tensors. ProcessGroupNCCL is created in nccl.cpp; the collectives
// below are written against c10d::Backend, so they serve both.
//
// Every entry point catches C++ exceptions and reports them through `err` (a NUL-terminated message, without
// the C++ backtrace c10::Error carries). Objects cross the boundary as opaque pointers that Rust frees.
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/autograd/custom_function.h>
#include <ATen/record_function.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "shim.h"

namespace spar {

void set_err(char* err, size_t len, const std::string& msg) {
  if (err == nullptr || len == 0) return;
  size_t n = msg.size() < len - 1 ? msg.size() : len - 1;
  std::memcpy(err, msg.data(), n);
  err[n] = '\0';
}

void report(char* err, size_t len) {
  try {
    throw;
  } catch (const c10::Error& e) {
    set_err(err, len, e.what_without_backtrace());
  } catch (const std::exception& e) {
    set_err(err, len, e.what());
  } catch (...) {
    set_err(err, len, "unknown C++ exception");
  }
}

}  // namespace spar

using spar::Group;
using spar::Store;
using spar::report;

namespace {


struct Work {
  c10::intrusive_ptr<c10d::Work> work;
};

std::chrono::milliseconds ms(int64_t v) { return std::chrono::milliseconds(v); }

c10d::ReduceOp reduce_op(int op) {
  switch (op) {
    case 0: return c10d::ReduceOp(c10d::ReduceOp::SUM);
    case 1: return c10d::ReduceOp(c10d::ReduceOp::AVG);
    case 2: return c10d::ReduceOp(c10d::ReduceOp::MAX);
    case 3: return c10d::ReduceOp(c10d::ReduceOp::MIN);
    default: throw std::invalid_argument("unknown reduce op code " + std::to_string(op));
  }
}

std::vector<uint8_t> bytes(const uint8_t* p, size_t n) { return std::vector<uint8_t>(p, p + n); }

// Hands a byte vector to Rust as a malloc'd buffer (freed by spar_bytes_free).
void give(const std::vector<uint8_t>& v, uint8_t** out, size_t* n) {
  *n = v.size();
  *out = static_cast<uint8_t*>(std::malloc(v.empty() ? 1 : v.size()));
  if (!v.empty()) std::memcpy(*out, v.data(), v.size());
}

// c10d's works record themselves in a running torch profiler: the record opens when a work is enqueued under
// a recording and closes on the backend's thread when the work completes. A work that completes after the
// recording stopped (the weight refresh a learner starts in a profiled round and its actors take later) then
// writes into a trace torch is finalizing or has finalized, racing its teardown: heap corruption, seen once in
// CI as "malloc(): unsorted double linked list corrupted". So every collective is enqueued with record
// functions off, and spar_work_wait records the wait on the caller's thread instead, where it cannot outlive
// the recording.
template <typename F>
auto unprofiled(F&& f) {
  at::DisableRecordFunctionGuard off;
  return f();
}

template <typename F>
void* new_work(char* err, size_t len, F&& f) {
  try {
    return new Work{unprofiled(f)};
  } catch (...) {
    report(err, len);
    return nullptr;
  }
}

// all_to_all_single into a new tensor of sum(out_splits) rows (the other dims as `in`'s), waited for: gloo
// blocks this thread with the group's timeout; NCCL orders the current CUDA stream after the collective.
at::Tensor all_to_all_rows(c10d::Backend* pg, const at::Tensor& in, std::vector<int64_t> out_splits,
                           std::vector<int64_t> in_splits) {
  int64_t rows = 0;
  for (auto r : out_splits) rows += r;
  auto sizes = in.sizes().vec();
  sizes[0] = rows;
  auto out = at::empty(sizes, in.options());
  auto input = in.contiguous();
  auto work = unprofiled([&] { return pg->alltoall_base(out, input, out_splits, in_splits, c10d::AllToAllOptions()); });
  RECORD_USER_SCOPE("c10d::wait ALLTOALL_BASE");
  work->wait();
  return out;
}

// all_to_all_single as an autograd function (expert parallelism's dispatch and combine): the gradient of a
// row exchange is the reverse exchange of the rows' gradients (splits swapped). The group must outlive the
// graph (Rust keeps it alive for the run).
struct AllToAllRows : public torch::autograd::Function<AllToAllRows> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& in, int64_t pg,
                            std::vector<int64_t> out_splits, std::vector<int64_t> in_splits) {
    ctx->saved_data["pg"] = pg;
    ctx->saved_data["out_splits"] = out_splits;
    ctx->saved_data["in_splits"] = in_splits;
    ctx->saved_data["sizes"] = in.sizes().vec();
    return all_to_all_rows(reinterpret_cast<c10d::Backend*>(pg), in, out_splits, in_splits);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto* pg = reinterpret_cast<c10d::Backend*>(ctx->saved_data["pg"].toInt());
    auto out_splits = ctx->saved_data["out_splits"].toIntVector();
    auto in_splits = ctx->saved_data["in_splits"].toIntVector();
    auto g = grads[0];
    if (!g.defined()) {
      // Every rank must still take part in the exchange: send zeros.
      auto sizes = ctx->saved_data["sizes"].toIntVector();
      int64_t rows = 0;
      for (auto r : out_splits) rows += r;
      sizes[0] = rows;
      g = at::zeros(sizes, grads[0].options());
    }
    return {all_to_all_rows(pg, g, in_splits, out_splits), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

extern "C" {

// A view of store `s` with every key under `prefix` (a subgroup's own namespace), freed by spar_store_free.
void* spar_store_prefixed(void* s, const char* prefix, char* err, size_t len) {
  try {
    auto* base = static_cast<Store*>(s);
    auto* out = new Store{};
    out->port = base->port;
    out->store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), base->store);
    return out;
  } catch (...) {
    report(err, len);
    return nullptr;
  }
}

// Differentiable all_to_all_single of `in`'s rows (see AllToAllRows): returns a new tensor, or null with `err`.
at::Tensor* spar_pg_all_to_all_autograd(void* g, at::Tensor* in, const int64_t* out_splits, size_t n_out,
                                        const int64_t* in_splits, size_t n_in, char* err, size_t len) {
  try {
    std::vector<int64_t> os(out_splits, out_splits + n_out);
    std::vector<int64_t> is(in_splits, in_splits + n_in);
    auto pg = reinterpret_cast<int64_t>(static_cast<Group*>(g)->backend.get());
    return new at::Tensor(AllToAllRows::apply(*in, pg, os, is));
  } catch (...) {
    report(err, len);
    return nullptr;
  }
}

void* spar_store_new(const char* host, uint16_t port, int is_server, int64_t world_size, int64_t timeout_ms,
                     const char* prefix, char* err, size_t len) {
  try {
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = is_server != 0;
    // The server does not wait for its clients here: spar's rendezvous (Rust) waits for each rank by key so
    // that a rank that never arrives is named in the error.
    opts.numWorkers = std::nullopt;
    opts.waitWorkers = false;
    opts.timeout = ms(timeout_ms);
    (void)world_size;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    auto* s = new Store{};
    s->port = tcp->getPort();
    if (prefix != nullptr && prefix[0] != '\0') {
      s->store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), tcp);
    } else {
      s->store = tcp;
    }
    return s;
  } catch (...) {
    report(err, len);
    return nullptr;
  }
}

void spar_store_free(void* s) { delete static_cast<Store*>(s); }

uint16_t spar_store_port(void* s) { return static_cast<Store*>(s)->port; }

int spar_store_set(void* s, const char* key, const uint8_t* v, size_t n, char* err, size_t len) {
  try {
    static_cast<Store*>(s)->store->set(key, bytes(v, n));
    return 0;
  } catch (...) {
    report(err, len);
    return 1;
  }
}

int spar_store_get(void* s, const char* key, int64_t timeout_ms, uint8_t** out, size_t* n, char* err,
                   size_t len) {
  try {
    auto& st = *static_cast<Store*>(s)->store;
    c10d::StoreTimeoutGuard guard(st, ms(timeout_ms));
    give(st.get(key), out, n);
    return 0;
  } catch (...) {
    report(err, len);
    return 1;
  }
}

int spar_store_compare_set(void* s, const char* key, const uint8_t* expected, size_t ne, const uint8_t* desired,
                           size_t nd, uint8_t** out, size_t* n, char* err, size_t len) {
  try {
    give(static_cast<Store*>(s)->store->compareSet(key, bytes(expected, ne), bytes(desired, nd)), out, n);
    return 0;
  } catch (...) {
    report(err, len);
    return 1;
  }
}

void spar_bytes_free(uint8_t* p) { std::free(p); }

int spar_store_add(void* s, const char* key, int64_t delta, int64_t* out, char* err, size_t len) {
  try {
    *out = static_cast<Store*>(s)->store->add(key, delta);
    return 0;
  } catch (...) {
    report(err, len);
    return 1;
  }
}

int spar_store_check(void* s, const char* key, int* out, char* err, size_t len) {
  try {
    *out = static_cast<Store*>(s)->store->check({std::string(key)}) ? 1 : 0;
    return 0;
  } catch (...) {
    report(err, len);
    return 1;
  }
}

void* spar_pg_gloo_new(void* s, int rank, int size, int64_t timeout_ms, const char* iface, const char* host,
                       char* err, size_t len) {
  try {
    auto opts = c10d::ProcessGroupGloo::Options::create(ms(timeout_ms));
    if (iface != nullptr && iface[0] != '\0') {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(iface));
    } else if (host != nullptr && host[0] != '\0') {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(host));
    } else {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    auto store = c10::make_intrusive<c10d::PrefixStore>("gloo/", static_cast<Store*>(s)->store);
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, size, opts);
    return new Group{pg};
  } catch (...) {
    report(err, len);
    return nullptr;
  }
}

// Shuts the backend down before freeing it (destroy_process_group's work): ProcessGroupNCCL otherwise warns at exit
// that it leaked its communicators; gloo's shutdown is a no-op.
void spar_pg_free(void* g) {
  auto* group = static_cast<Group*>(g);
  try {
    group->backend->shutdown();
  } catch (...) {
  }
  delete group;
}

void* spar_pg_all_reduce(void* g, at::Tensor* t, int op, char* err, size_t len) {
  return new_work(err, len, [&] {
    std::vector<at::Tensor> ts{*t};
    c10d::AllreduceOptions o;
    o.reduceOp = reduce_op(op);
    return static_cast<Group*>(g)->backend->allreduce(ts, o);
  });
}

void* spar_pg_broadcast(void* g, at::Tensor* t, int root, char* err, size_t len) {
  return new_work(err, len, [&] {
    std::vector<at::Tensor> ts{*t};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    return static_cast<Group*>(g)->backend->broadcast(ts, o);
  });
}

void* spar_pg_all_gather_into(void* g, at::Tensor* out, at::Tensor* in, char* err, size_t len) {
  return new_work(err, len, [&] {
    return static_cast<Group*>(g)->backend->_allgather_base(*out, *in, c10d::AllgatherOptions());
  });
}

void* spar_pg_reduce_scatter(void* g, at::Tensor* out, at::Tensor* in, int op, char* err, size_t len) {
  return new_work(err, len, [&] {
    c10d::ReduceScatterOptions o;
    o.reduceOp = reduce_op(op);
    return static_cast<Group*>(g)->backend->_reduce_scatter_base(*out, *in, o);
  });
}

void* spar_pg_all_to_all_single(void* g, at::Tensor* out, at::Tensor* in, const int64_t* out_splits, size_t n_out,
                                const int64_t* in_splits, size_t n_in, char* err, size_t len) {
  return new_work(err, len, [&] {
    std::vector<int64_t> os(out_splits, out_splits + n_out);
    std::vector<int64_t> is(in_splits, in_splits + n_in);
    return static_cast<Group*>(g)->backend->alltoall_base(*out, *in, os, is, c10d::AllToAllOptions());
  });
}

void* spar_pg_barrier(void* g, char* err, size_t len) {
  return new_work(err, len, [&] { return static_cast<Group*>(g)->backend->barrier(c10d::BarrierOptions()); });
}

int spar_work_wait(void* w, int64_t timeout_ms, char* err, size_t len) {
  try {
    auto& work = static_cast<Work*>(w)->work;
    // The wait as a span of the caller's thread (see `unprofiled`): `c10d::wait ALLREDUCE`, `... BROADCAST`.
    at::RecordFunction span(at::RecordScope::USER_SCOPE);
    if (span.isActive()) span.before("c10d::wait " + c10d::opTypeToString(work->retrieveOpType()));
    // No timeout (<= 0): NCCL's wait only orders the current CUDA stream after the collective and returns at
    // once; a timeout would make it block this thread until the GPU finished (ProcessGroupNCCL's blocking
    // wait), stalling every launch behind it. NCCL's watchdog enforces the group's own timeout instead.
    if (timeout_ms <= 0) {
      work->wait();
      return 0;
    }
    if (!work->wait(ms(timeout_ms))) {
      spar::set_err(err, len, "timed out after " + std::to_string(timeout_ms) + " ms");
      return 1;
    }
    return 0;
  } catch (...) {
    report(err, len);
    return 1;
  }
}

int spar_work_is_completed(void* w) { return static_cast<Work*>(w)->work->isCompleted() ? 1 : 0; }

void spar_work_free(void* w) { delete static_cast<Work*>(w); }

}  // extern "C"
