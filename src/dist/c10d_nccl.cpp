// NCCL process groups (libtorch_cuda's `c10d::ProcessGroupNCCL`). Compiled only when the build
// finds CUDA runtime and NCCL headers (USE_C10D_NCCL); otherwise the entry point says so.

#include "c10d_bridge.h"

#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

extern "C" {

int mdlm_c10d_has_nccl() {
#ifdef USE_C10D_NCCL
  return 1;
#else
  return 0;
#endif
}

char* mdlm_c10d_pg_new_nccl(mdlm_store* s, int rank, int world, int64_t timeout_ms,
                            mdlm_pg** out) {
#ifdef USE_C10D_NCCL
  try {
    auto opts = c10::make_intrusive<c10d::ProcessGroupNCCL::Options>(false);
    opts->timeout = std::chrono::milliseconds(timeout_ms);
    auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(s->store, rank, world, opts);
    *out = new mdlm_pg{pg, world, true};
    return nullptr;
  } catch (const std::exception& e) {
    return mdlm_c10d_error(e.what());
  } catch (...) {
    return mdlm_c10d_error("unknown C++ exception in c10d (NCCL)");
  }
#else
  (void)s;
  (void)rank;
  (void)world;
  (void)timeout_ms;
  (void)out;
  return mdlm_c10d_error(
      "this build has no NCCL: CUDA runtime and NCCL headers were not found when mdlm was "
      "compiled (scripts/setup-dist.sh installs them next to libtorch; or set "
      "MDLM_CUDA_INCLUDE), so CUDA tensors cannot be reduced");
#endif
}

}  // extern "C"
