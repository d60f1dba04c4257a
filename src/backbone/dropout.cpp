// Dropout for CPU float32/float64 tensors as one pass over the elements, with the keep mask drawn
// from a counter-based generator (Philox 4x32-10, the one CUDA's dropout uses) keyed by a single
// 64-bit draw from libtorch's default CPU generator. Element i is kept when the i-th Philox word
// of that key is at least p * 2^32, and kept elements are scaled by 1 / (1 - p): the distribution
// of torch's dropout, at a tenth of the time of its per-element `bernoulli_` on CPU.
//
// Because the mask is a function of (key, i), the backward pass regenerates it instead of saving
// it (dropout is linear: its gradient is the same masked scaling), and the result does not depend
// on how the elements are split between threads. The key is drawn under the generator's lock, so
// `manual_seed` and the checkpointed generator state make it reproducible as any other draw.
// Every entry returns nullptr or an error message, as ../ffi_error.h says.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>
#include <ATen/core/PhiloxRNGEngine.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <mutex>

#include "../ffi_error.h"
#include "parallel.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Elements per work item; a multiple of 4 so that every item starts on a Philox block.
constexpr int64_t kBlock = 1 << 14;

// Keep threshold on a 32-bit word: P(word >= threshold) = 1 - p up to 2^-32.
uint64_t threshold(double p) { return static_cast<uint64_t>(std::llround(p * 4294967296.0)); }

template <typename scalar_t>
void masked_scale(const scalar_t* x, scalar_t* y, int64_t numel, uint64_t key, double p) {
  const uint64_t thr = threshold(p);
  const auto scale = static_cast<scalar_t>(1.0 / (1.0 - p));
  const int64_t items = (numel + kBlock - 1) / kBlock;
  mdlm_parallel_items(items, [&](int64_t first, int64_t end, int64_t) {
    for (int64_t item = first; item < end; item++) {
      const int64_t begin = item * kBlock;
      const int64_t stop = std::min(numel, begin + kBlock);
      // Offset counts 128-bit blocks: element i is word i % 4 of block i / 4.
      at::philox_engine gen(key, /*subsequence=*/0, /*offset=*/begin / 4);
      for (int64_t i = begin; i < stop; i++) {
        y[i] = static_cast<uint64_t>(gen()) >= thr ? x[i] * scale : scalar_t(0);
      }
    }
  });
}

// x * keep(key, i) / (1 - p) elementwise, a new contiguous tensor shaped like x.
at::Tensor apply_mask(const at::Tensor& x, double p, uint64_t key) {
  const auto xc = x.contiguous();
  auto y = at::empty_like(xc, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "mdlm_dropout", [&] {
    masked_scale<scalar_t>(xc.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), xc.numel(), key, p);
  });
  return y;
}

uint64_t draw_key() {
  auto gen = at::get_generator_or_default<at::CPUGeneratorImpl>(
      std::nullopt, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  return gen->random64();
}

class Dropout : public torch::autograd::Function<Dropout> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, double p, int64_t key) {
    ctx->saved_data["p"] = p;
    ctx->saved_data["key"] = key;
    return apply_mask(x, p, static_cast<uint64_t>(key));
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const double p = ctx->saved_data["p"].toDouble();
    const auto key = static_cast<uint64_t>(ctx->saved_data["key"].toInt());
    // Under create_graph the masked scaling of the gradient is itself this function.
    auto g = at::GradMode::is_enabled()
                 ? Dropout::apply(grad_out[0], p, static_cast<int64_t>(key))
                 : apply_mask(grad_out[0], p, key);
    return {g, at::Tensor(), at::Tensor()};
  }
};

// `key` < 0: draw one from the default generator.
at::Tensor dropout(const at::Tensor& x, double p, int64_t key) {
  TORCH_CHECK(x.device().is_cpu(), "the CPU dropout kernel got a ", x.device(), " tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "the CPU dropout kernel takes float32/float64, got ", x.scalar_type());
  TORCH_CHECK(p >= 0.0 && p < 1.0, "dropout probability must be in [0, 1), got ", p);
  if (key < 0) {
    // The key is a Philox seed; 63 bits of the draw are plenty and keep it a valid int64.
    key = static_cast<int64_t>(draw_key() >> 1);
  }
  if (at::GradMode::is_enabled() && x.requires_grad()) {
    return Dropout::apply(x, p, key);
  }
  return apply_mask(x, p, static_cast<uint64_t>(key));
}

}  // namespace

#define MDLM_TRY(...) MDLM_CATCH_INTO_ERROR("unknown C++ exception in dropout", __VA_ARGS__)

extern "C" {

// `*out` receives a new tensor: `x` with each element zeroed with probability `p` and the rest
// scaled by 1 / (1 - p). CPU float32/float64 only (the caller routes the rest to aten::dropout).
// `key` >= 0 fixes the mask (tests); < 0 draws it from libtorch's default CPU generator.
char* mdlm_dropout_cpu(const at::Tensor* x, double p, int64_t key, at::Tensor** out) {
  MDLM_TRY(*out = new at::Tensor(dropout(*x, p, key)))
}

}  // extern "C"
