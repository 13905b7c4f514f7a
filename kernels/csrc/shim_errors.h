// How every entry point of spar's libtorch shims reports a failure: C++ exceptions never cross the C ABI; the
// message goes into the caller's buffer `err` of `len` bytes (NUL-terminated, cut to fit) and the call returns 1.
#pragma once

#include <cstring>
#include <exception>
#include <string>

namespace spar_shim {

inline void set_err(char* err, size_t len, const std::string& msg) {
  if (err == nullptr || len == 0) return;
  size_t n = msg.size() < len - 1 ? msg.size() : len - 1;
  std::memcpy(err, msg.data(), n);
  err[n] = '\0';
}

// Runs `f`; 0 when it returned, 1 with the exception's message in `err` when it threw.
template <typename F>
int guarded(char* err, size_t len, F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    set_err(err, len, e.what());
  } catch (...) {
    set_err(err, len, "unknown C++ exception");
  }
  return 1;
}

}  // namespace spar_shim
