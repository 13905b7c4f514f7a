// Shared between c10d.cpp and nccl.cpp: the process-group handle and the error reporting.
#pragma once
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <cstdint>

#include <string>

namespace spar {

// A store as Rust holds it: the TCPStore, possibly under a PrefixStore (torchrun's agent store), and the port
// the TCPStore listens on or connects to.
struct Store {
  c10::intrusive_ptr<c10d::Store> store;
  uint16_t port = 0;
};

// A process group as Rust holds it: any c10d backend (gloo or NCCL).
struct Group {
  c10::intrusive_ptr<c10d::Backend> backend;
};

// Copies `msg` into `err` (NUL-terminated, truncated to `len`).
void set_err(char* err, size_t len, const std::string& msg);

// Reports the exception being handled (call inside a catch block).
void report(char* err, size_t len);

}  // namespace spar
