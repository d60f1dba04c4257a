// Work split over libtorch's intra-op threads for the backbone's C++ kernels (scan.cpp,
// dropout.cpp, rotary.cpp).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>

#include <cstdint>

// Runs f(begin, end, thread) over the items [0, n) on libtorch's intra-op threads, `thread` <
// at::get_num_threads(). Not at::parallel_for: its OpenMP body is only compiled with -fopenmp,
// which the bridges are built without, so here it would run serially; and a pool of our own
// would fight libtorch's spinning OpenMP workers for the cores. TensorIterator::for_each is
// compiled inside libtorch, so it hands out ranges of a tensor of item numbers on those workers.
template <typename F>
void mdlm_parallel_items(int64_t n, const F& f) {
  const auto items = at::arange(n, at::kLong);
  auto iter = at::TensorIteratorConfig()
                  .add_output(items)
                  .resize_outputs(false)
                  .check_all_same_dtype(false)
                  .build();
  iter.for_each(
      [&](char** data, const int64_t* strides, int64_t size0, int64_t size1) {
        TORCH_CHECK(size1 == 1 && (size0 == 1 || strides[0] == sizeof(int64_t)),
                    "item ranges must be contiguous");
        const int64_t first = *reinterpret_cast<const int64_t*>(data[0]);
        f(first, first + size0, static_cast<int64_t>(at::get_thread_num()));
      },
      /*grain_size=*/1);
}
