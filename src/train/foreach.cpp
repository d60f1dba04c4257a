// libtorch's multi-tensor (`_foreach_*`) ops, which tch does not generate because they take
// and return tensor lists: one dispatched op per list instead of one per parameter (on a GPU,
// a handful of kernel launches instead of hundreds). On CPU each falls back to the per-tensor op,
// so the numbers are the per-tensor loop's, bit for bit. Every entry returns nullptr or an error
// message, as ../ffi_error.h says.
#include <ATen/ATen.h>

#include <vector>

#include "../ffi_error.h"

namespace {

std::vector<at::Tensor> list(at::Tensor* const* ts, size_t n) {
  std::vector<at::Tensor> v;
  v.reserve(n);
  for (size_t i = 0; i < n; i++) {
    v.push_back(*ts[i]);
  }
  return v;
}

std::vector<at::Scalar> scalars(const double* s, size_t n) {
  return std::vector<at::Scalar>(s, s + n);
}

void hand_out(const std::vector<at::Tensor>& v, at::Tensor** out) {
  for (size_t i = 0; i < v.size(); i++) {
    out[i] = new at::Tensor(v[i]);
  }
}

}  // namespace

#define MDLM_TRY(...) MDLM_CATCH_INTO_ERROR("unknown C++ exception in a foreach op", __VA_ARGS__)

extern "C" {

// torch's `zero_grad(set_to_none=True)`: no op at all, and the next backward writes the gradient
// instead of adding it to zeros.
char* mdlm_grads_to_none(at::Tensor* const* p, size_t n) {
  MDLM_TRY(for (size_t i = 0; i < n; i++) { p[i]->mutable_grad().reset(); })
}

char* mdlm_foreach_lerp_(at::Tensor* const* self, at::Tensor* const* end, size_t n, double w) {
  MDLM_TRY(at::_foreach_lerp_(list(self, n), list(end, n), w))
}

char* mdlm_foreach_mul_scalar_(at::Tensor* const* self, size_t n, double s) {
  MDLM_TRY(at::_foreach_mul_(list(self, n), s))
}

char* mdlm_foreach_mul_tensor_(at::Tensor* const* self, size_t n, const at::Tensor* s) {
  MDLM_TRY(at::_foreach_mul_(list(self, n), *s))
}

char* mdlm_foreach_add_scalar_(at::Tensor* const* self, size_t n, double s) {
  MDLM_TRY(at::_foreach_add_(list(self, n), s))
}

char* mdlm_foreach_div_scalars_(at::Tensor* const* self, size_t n, const double* s) {
  MDLM_TRY(at::_foreach_div_(list(self, n), scalars(s, n)))
}

char* mdlm_foreach_addcmul_(at::Tensor* const* self, at::Tensor* const* t1,
                            at::Tensor* const* t2, size_t n, double value) {
  MDLM_TRY(at::_foreach_addcmul_(list(self, n), list(t1, n), list(t2, n), value))
}

char* mdlm_foreach_addcdiv_scalars_(at::Tensor* const* self, at::Tensor* const* t1,
                                    at::Tensor* const* t2, size_t n, const double* s) {
  MDLM_TRY(at::_foreach_addcdiv_(list(self, n), list(t1, n), list(t2, n), scalars(s, n)))
}

char* mdlm_foreach_sub_(at::Tensor* const* self, at::Tensor* const* other, size_t n) {
  MDLM_TRY(at::_foreach_sub_(list(self, n), list(other, n)))
}

char* mdlm_foreach_sub(at::Tensor* const* a, at::Tensor* const* b, size_t n, at::Tensor** out) {
  MDLM_TRY(hand_out(at::_foreach_sub(list(a, n), list(b, n)), out))
}

char* mdlm_foreach_sqrt(at::Tensor* const* a, size_t n, at::Tensor** out) {
  MDLM_TRY(hand_out(at::_foreach_sqrt(list(a, n)), out))
}

char* mdlm_foreach_norm(at::Tensor* const* a, size_t n, at::Tensor** out) {
  MDLM_TRY(hand_out(at::_foreach_norm(list(a, n), 2), out))
}

}  // extern "C"
