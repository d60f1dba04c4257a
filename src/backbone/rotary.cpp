// The attention input on CPU in one pass each way: the qkv projection [B, n, 3, nh, dh] becomes
// rotary'd q, k and plain v, each [B, n, nh, dh] (the caller transposes them to [B, nh, n, dh]:
// the layout libtorch's CPU flash attention works in, so its gradients come back contiguous in
// it), and the backward pass writes the
// gradient of qkv from theirs directly. The composite (narrow, flip, mul, addcmul, permute,
// select) spends most of its time copying: three extra passes forward, and in backward two
// zero-filled [B, n, 3, nh, dh] buffers (slice and select backward), a stack, a flip and an add.
//
// The arithmetic is the composite's, rounding for rounding, so results are bit-identical:
// forward `x * [cos, cos]` then addcmul with the swapped halves and `[-sin, sin]` (ATen's
// addcmul is one fused multiply-add), backward `g * cos + swap(g * sin)` as two products and a
// sum (autograd's mul, flip and accumulation). Every entry returns nullptr or an error message,
// as ../ffi_error.h says.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/TensorIterator.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>

#include "../ffi_error.h"
#include "parallel.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// One head's rotation: y = fma(swap(x), sin, x * cos), as addcmul rounds it. Inlined into the
// two callers below: with the FMA instruction where the CPU has it, libm's correctly rounded fma
// otherwise.
template <typename T>
__attribute__((always_inline)) inline void rotate(const T* __restrict x, const T* __restrict cos,
                                                  const T* __restrict sin, T* __restrict y,
                                                  int64_t half) {
  for (int64_t d = 0; d < half; d++) {
    y[d] = std::fma(x[d + half], sin[d], x[d] * cos[d]);
    y[d + half] = std::fma(x[d], sin[d + half], x[d + half] * cos[d + half]);
  }
}

template <typename T>
__attribute__((target("fma"))) void rotate_fma(const T* x, const T* cos, const T* sin, T* y,
                                               int64_t half) {
  rotate(x, cos, sin, y, half);
}

template <typename T>
void rotate_libm(const T* x, const T* cos, const T* sin, T* y, int64_t half) {
  rotate(x, cos, sin, y, half);
}

// Its gradient: g * cos + swap(g * sin), each product rounded, then the sum (no fused multiply-add
// is possible here: this file is compiled without -mfma and in ISO C++, which contracts nothing).
template <typename T>
void unrotate(const T* __restrict g, const T* __restrict cos, const T* __restrict sin,
              T* __restrict gx, int64_t half) {
  for (int64_t d = 0; d < half; d++) {
    const T a = g[d] * cos[d];
    const T b = g[d + half] * sin[d + half];
    gx[d] = a + b;
    const T c = g[d + half] * cos[d + half];
    const T e = g[d] * sin[d];
    gx[d + half] = c + e;
  }
}

struct Shape {
  int64_t batch, n, heads, dh;
};

Shape shape_of(const at::Tensor& qkv) {
  TORCH_CHECK(qkv.dim() == 5 && qkv.size(2) == 3, "qkv must be [B, n, 3, nh, dh], got ",
              qkv.sizes());
  TORCH_CHECK(qkv.size(4) % 2 == 0, "the head dimension must be even, got ", qkv.size(4));
  return {qkv.size(0), qkv.size(1), qkv.size(3), qkv.size(4)};
}

variable_list split(const at::Tensor& qkv_in, const at::Tensor& cos_in, const at::Tensor& sin_in) {
  const auto s = shape_of(qkv_in);
  const auto qkv = qkv_in.contiguous();
  const auto cos = cos_in.contiguous();
  const auto sin = sin_in.contiguous();
  TORCH_CHECK(cos.numel() == s.n * s.dh && sin.numel() == s.n * s.dh,
              "rotary tables must hold [n, dh] = [", s.n, ", ", s.dh, "]");
  const auto opts = qkv.options();
  variable_list out;
  for (int j = 0; j < 3; j++) {
    out.push_back(at::empty({s.batch, s.n, s.heads, s.dh}, opts));
  }
  const bool fma = __builtin_cpu_supports("fma");
  AT_DISPATCH_FLOATING_TYPES(qkv.scalar_type(), "mdlm_rotary_qkv", [&] {
    const scalar_t* src = qkv.data_ptr<scalar_t>();
    const scalar_t* c = cos.data_ptr<scalar_t>();
    const scalar_t* sn = sin.data_ptr<scalar_t>();
    scalar_t* dst[3] = {out[0].data_ptr<scalar_t>(), out[1].data_ptr<scalar_t>(),
                        out[2].data_ptr<scalar_t>()};
    mdlm_parallel_items(s.batch * s.n, [&](int64_t first, int64_t end, int64_t) {
      for (int64_t row = first; row < end; row++) {
        const int64_t t = row % s.n;
        const scalar_t* ct = c + t * s.dh;
        const scalar_t* st = sn + t * s.dh;
        for (int64_t j = 0; j < 3; j++) {
          for (int64_t h = 0; h < s.heads; h++) {
            const scalar_t* x = src + ((row * 3 + j) * s.heads + h) * s.dh;
            scalar_t* y = dst[j] + (row * s.heads + h) * s.dh;
            if (j == 2) {
              std::copy(x, x + s.dh, y);
            } else if (fma) {
              rotate_fma(x, ct, st, y, s.dh / 2);
            } else {
              rotate_libm(x, ct, st, y, s.dh / 2);
            }
          }
        }
      }
    });
  });
  return out;
}

// grads of q, k, v [B, n, nh, dh] (undefined: zero) → grad of qkv [B, n, 3, nh, dh].
at::Tensor join_grads(const variable_list& grads, const at::Tensor& cos_in,
                      const at::Tensor& sin_in, const Shape& s, const at::TensorOptions& opts) {
  const auto cos = cos_in.contiguous();
  const auto sin = sin_in.contiguous();
  at::Tensor g[3];
  for (int j = 0; j < 3; j++) {
    g[j] = grads[j].defined() ? grads[j].contiguous()
                              : at::zeros({s.batch, s.n, s.heads, s.dh}, opts);
  }
  auto gx = at::empty({s.batch, s.n, 3, s.heads, s.dh}, opts);
  AT_DISPATCH_FLOATING_TYPES(gx.scalar_type(), "mdlm_rotary_qkv_backward", [&] {
    const scalar_t* c = cos.data_ptr<scalar_t>();
    const scalar_t* sn = sin.data_ptr<scalar_t>();
    const scalar_t* src[3] = {g[0].data_ptr<scalar_t>(), g[1].data_ptr<scalar_t>(),
                              g[2].data_ptr<scalar_t>()};
    scalar_t* dst = gx.data_ptr<scalar_t>();
    mdlm_parallel_items(s.batch * s.n, [&](int64_t first, int64_t end, int64_t) {
      for (int64_t row = first; row < end; row++) {
        const int64_t t = row % s.n;
        for (int64_t j = 0; j < 3; j++) {
          for (int64_t h = 0; h < s.heads; h++) {
            const scalar_t* gy = src[j] + (row * s.heads + h) * s.dh;
            scalar_t* y = dst + ((row * 3 + j) * s.heads + h) * s.dh;
            if (j == 2) {
              std::copy(gy, gy + s.dh, y);
            } else {
              unrotate(gy, c + t * s.dh, sn + t * s.dh, y, s.dh / 2);
            }
          }
        }
      }
    });
  });
  return gx;
}

class RotaryQkv : public torch::autograd::Function<RotaryQkv> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& qkv,
                               const at::Tensor& cos, const at::Tensor& sin) {
    ctx->save_for_backward({cos, sin});
    ctx->saved_data["shape"] = qkv.sizes().vec();
    return split(qkv, cos, sin);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "the fused rotary qkv split has no double backward (create_graph=True)");
    const auto saved = ctx->get_saved_variables();
    const auto sizes = ctx->saved_data["shape"].toIntVector();
    const Shape s{sizes[0], sizes[1], sizes[3], sizes[4]};
    auto gx = join_grads(grad_out, saved[0], saved[1], s, saved[0].options());
    return {gx, at::Tensor(), at::Tensor()};
  }
};

variable_list rotary_qkv(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(qkv.device().is_cpu(), "the fused rotary split got a ", qkv.device(), " tensor");
  TORCH_CHECK(cos.scalar_type() == qkv.scalar_type() && sin.scalar_type() == qkv.scalar_type(),
              "rotary tables must be ", qkv.scalar_type());
  if (at::GradMode::is_enabled() && qkv.requires_grad()) {
    return RotaryQkv::apply(qkv, cos, sin);
  }
  return split(qkv, cos, sin);
}

}  // namespace

#define MDLM_TRY(...) MDLM_CATCH_INTO_ERROR("unknown C++ exception in the rotary split", __VA_ARGS__)

extern "C" {

// `out[0..3]` receive new tensors q, k (rotated) and v, each [B, n, nh, dh] contiguous, from
// `qkv` [B, n, 3, nh, dh] and the tables `cos` = [cos, cos], `sin` = [-sin, sin], each [n, dh].
char* mdlm_rotary_qkv(const at::Tensor* qkv, const at::Tensor* cos, const at::Tensor* sin,
                      at::Tensor** out) {
  MDLM_TRY({
    auto v = rotary_qkv(*qkv, *cos, *sin);
    for (int j = 0; j < 3; j++) {
      out[j] = new at::Tensor(std::move(v[j]));
    }
  })
}

}  // extern "C"
