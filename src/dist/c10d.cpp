// The C side of `src/dist`: a handful of extern "C" functions over torch.distributed's own engine
// (c10d) as shipped inside the libtorch that tch links. Nothing here implements a collective;
// every call forwards to `c10d::TCPStore` and to a `c10d::Backend` (Gloo from libtorch_cpu,
// NCCL from libtorch_cuda, see c10d_nccl.cpp).
//
// Every entry point returns NULL on success or a malloc'd message (freed by
// `mdlm_c10d_free_error`): a C++ exception must never unwind into Rust (see ../ffi_error.h).
//
// Gloo's headers are not in the torch wheel; the build takes them from the system (Debian's
// libgloo-dev, installed by scripts/setup-dist.sh). Only torch's out-of-line functions
// construct gloo objects (`Options`' constructor, `createDefaultDevice`, the process group's
// constructor), so the layout of gloo's own structs in those headers is never relied on: the
// process group holds gloo state behind pointers that only libtorch_cpu dereferences.

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef MDLM_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>

#include "../ffi_error.h"
#include "c10d_bridge.h"

char* mdlm_c10d_error(const std::string& what) { return mdlm_error_message(what); }

#define MDLM_GUARD(...) MDLM_CATCH_INTO_ERROR("unknown C++ exception in c10d", __VA_ARGS__)

c10::intrusive_ptr<c10d::Backend> mdlm_gloo_backend([[maybe_unused]] const mdlm_pg_args& a) {
#ifdef MDLM_GLOO
  auto opts = c10::make_intrusive<c10d::ProcessGroupGloo::Options>(a.timeout);
  // torch.distributed reads GLOO_SOCKET_IFNAME in Python; this bridge is the only caller here.
  const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
  if (ifname != nullptr && *ifname != '\0') {
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
  } else {
    opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  }
  return c10::make_intrusive<c10d::ProcessGroupGloo>(a.s->store, a.rank, a.world, opts);
#else
  throw std::runtime_error(
      "this build has no Gloo: gloo's headers were not found when mdlm was compiled "
      "(install them with scripts/setup-dist.sh, i.e. apt-get install libgloo-dev, then rebuild)");
#endif
}

// Waits for a collective. Gloo's wait() blocks and throws after the group's timeout. NCCL's only
// makes the current CUDA stream wait for it (blocking the host needs TORCH_NCCL_BLOCKING_WAIT,
// read when the group is made), so with a dead peer the next host read would hang for good: poll
// the work until it completes, rethrows NCCL's own error, or outlives the timeout; then abort the
// communicators, so no kernel stays queued behind the dead peer, and say so.
static void finish(mdlm_pg* pg, const c10::intrusive_ptr<c10d::Work>& work) {
  work->wait();
  if (!pg->nccl) {
    return;
  }
  const auto deadline = std::chrono::steady_clock::now() + pg->timeout;
  auto pause = std::chrono::microseconds(20);
  while (!work->isCompleted()) {
    if (std::chrono::steady_clock::now() > deadline) {
      pg->backend->abort();
      throw std::runtime_error("NCCL collective not finished after trainer.dist_timeout_s (" +
                               std::to_string(pg->timeout.count() / 1000) +
                               " s): a peer process died or is stuck");
    }
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds(2000));
  }
  work->wait();  // rethrows an error the work completed with
}

extern "C" {

void mdlm_c10d_free_error(char* e) { std::free(e); }

int mdlm_c10d_has_gloo() {
#ifdef MDLM_GLOO
  return 1;
#else
  return 0;
#endif
}

char* mdlm_c10d_store_new(const char* host, int port, int is_server, int world,
                          int64_t timeout_ms, mdlm_store** out) {
  MDLM_GUARD({
    c10d::TCPStoreOptions o;
    o.port = static_cast<std::uint16_t>(port);
    o.isServer = is_server != 0;
    o.numWorkers = static_cast<std::size_t>(world);
    // The server waits (up to the timeout) until every rank has connected, so a rank that never
    // starts fails the rendezvous instead of hanging it.
    o.waitWorkers = true;
    o.timeout = std::chrono::milliseconds(timeout_ms);
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), o);
    *out = new mdlm_store{store};
  })
}

void mdlm_c10d_store_free(mdlm_store* s) { delete s; }

char* mdlm_c10d_store_set(mdlm_store* s, const char* key, const uint8_t* value, size_t len) {
  MDLM_GUARD({
    std::vector<uint8_t> v(value, value + len);
    s->store->set(std::string(key), v);
  })
}

char* mdlm_c10d_store_get(mdlm_store* s, const char* key, uint8_t** value, size_t* len) {
  MDLM_GUARD({
    std::vector<uint8_t> v = s->store->get(std::string(key));
    *len = v.size();
    *value = static_cast<uint8_t*>(std::malloc(v.size() > 0 ? v.size() : 1));
    if (*value == nullptr) {
      throw std::bad_alloc();
    }
    std::memcpy(*value, v.data(), v.size());
  })
}

void mdlm_c10d_free_bytes(uint8_t* b) { std::free(b); }

char* mdlm_c10d_store_add(mdlm_store* s, const char* key, int64_t delta, int64_t* out) {
  MDLM_GUARD({ *out = s->store->add(std::string(key), delta); })
}

char* mdlm_c10d_pg_new(mdlm_store* s, int rank, int world, int64_t timeout_ms, int nccl,
                       mdlm_pg** out) {
  const mdlm_pg_args a{s, rank, world, std::chrono::milliseconds(timeout_ms)};
  try {
    auto backend = nccl != 0 ? mdlm_nccl_backend(a) : mdlm_gloo_backend(a);
    *out = new mdlm_pg{backend, world, nccl != 0, a.timeout};
    return nullptr;
  } catch (const std::exception& e) {
    return mdlm_c10d_error(e.what());
  } catch (...) {
    return mdlm_c10d_error(nccl != 0 ? "unknown C++ exception in c10d (NCCL)"
                                     : "unknown C++ exception in c10d");
  }
}

char* mdlm_c10d_allreduce(mdlm_pg* pg, at::Tensor* t, int avg) {
  MDLM_GUARD({
    std::vector<at::Tensor> v{*t};
    c10d::AllreduceOptions o;
    // Gloo has no AVG: sum, then divide (what DDP does on Gloo too).
    o.reduceOp = (avg != 0 && pg->nccl) ? c10d::ReduceOp(c10d::ReduceOp::AVG)
                                        : c10d::ReduceOp(c10d::ReduceOp::SUM);
    finish(pg, pg->backend->allreduce(v, o));
    if (avg != 0 && !pg->nccl) {
      t->div_(pg->world);
    }
  })
}

char* mdlm_c10d_broadcast(mdlm_pg* pg, at::Tensor* t, int root) {
  MDLM_GUARD({
    std::vector<at::Tensor> v{*t};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    finish(pg, pg->backend->broadcast(v, o));
  })
}

char* mdlm_c10d_barrier(mdlm_pg* pg) {
  MDLM_GUARD({
    finish(pg, pg->backend->barrier(c10d::BarrierOptions()));
  })
}

char* mdlm_c10d_pg_shutdown(mdlm_pg* pg) { MDLM_GUARD({ pg->backend->shutdown(); }) }

void mdlm_c10d_pg_free(mdlm_pg* pg) { delete pg; }

}  // extern "C"
