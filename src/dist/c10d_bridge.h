// Shared by c10d.cpp and c10d_nccl.cpp: the opaque handles the Rust side holds.
#pragma once
#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>
#include <string>

struct mdlm_store {
  c10::intrusive_ptr<c10d::Store> store;
};

struct mdlm_pg {
  c10::intrusive_ptr<c10d::Backend> backend;
  int world;
  // NCCL: reduces with AVG itself (Gloo has only SUM), and its Work::wait() does not block the
  // host, so a collective with a dead peer is waited for with `timeout` by the bridge.
  bool nccl;
  std::chrono::milliseconds timeout;
};

char* mdlm_c10d_error(const std::string& what);

// What a process group is made from.
struct mdlm_pg_args {
  mdlm_store* s;
  int rank;
  int world;
  std::chrono::milliseconds timeout;
};

// Each backend's process group; throws, saying what is missing and how to get it, when the
// backend was compiled out (then `a.s` is never read and may be null).
c10::intrusive_ptr<c10d::Backend> mdlm_gloo_backend(const mdlm_pg_args& a);
c10::intrusive_ptr<c10d::Backend> mdlm_nccl_backend(const mdlm_pg_args& a);
