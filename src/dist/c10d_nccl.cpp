// NCCL process groups (libtorch_cuda's `c10d::ProcessGroupNCCL`). Compiled only when the build
// finds CUDA runtime and NCCL headers (USE_C10D_NCCL); otherwise the constructor says so.

#include "c10d_bridge.h"

#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <stdexcept>

c10::intrusive_ptr<c10d::Backend> mdlm_nccl_backend([[maybe_unused]] const mdlm_pg_args& a) {
#ifdef USE_C10D_NCCL
  auto opts = c10::make_intrusive<c10d::ProcessGroupNCCL::Options>(false);
  opts->timeout = a.timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(a.s->store, a.rank, a.world, opts);
#else
  throw std::runtime_error(
      "this build has no NCCL: CUDA runtime and NCCL headers were not found when mdlm was "
      "compiled (scripts/setup-dist.sh installs them next to libtorch; or set "
      "MDLM_CUDA_INCLUDE), so CUDA tensors cannot be reduced");
#endif
}

extern "C" {

int mdlm_c10d_has_nccl() {
#ifdef USE_C10D_NCCL
  return 1;
#else
  return 0;
#endif
}

}  // extern "C"
