// Shared helpers of the kernels in this folder: checks of the arguments, float partial sums per
// block of rows folded into per-thread double totals, a horizontal sum, a dot product and hardsigmoid.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <vector>

namespace partialnet_kernels {

using Vec = at::vec::Vectorized<float>;

// Each check returns the checked tensor's data, for the inputs a kernel only reads.
inline const float* check_matrix(const at::Tensor& t, const char* name, int64_t rows = -1, int64_t cols = -1) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.dim() == 2 && t.is_contiguous(), name,
              " must be a contiguous float32 CPU matrix");
  TORCH_CHECK(rows < 0 || (t.size(0) == rows && t.size(1) == cols), name, " has the wrong shape");
  return t.data_ptr<float>();
}

inline const float* check_vector(const at::Tensor& t, const char* name, int64_t size) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.dim() == 1 && t.is_contiguous() &&
                  t.size(0) == size,
              name, " must be a contiguous float32 CPU vector of ", size, " values");
  return t.data_ptr<float>();
}

// PAT_sp's attention half: columns [0, ca) of C, at least one channel (and one left when `rest`).
inline void check_split(int64_t ca, int64_t c, bool rest) {
  TORCH_CHECK(ca >= 1 && (rest ? ca < c : ca <= c), "the attention half has ", ca, " of ", c,
              " channels; it needs between 1 and ", rest ? c - 1 : c);
}

inline float sum_of(const Vec& v) {
  return at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, v);
}

inline float dot(const float* x, const float* w, int64_t n) {
  Vec acc(0.f);
  int64_t j = 0;
  for (; j + Vec::size() <= n; j += Vec::size()) acc = at::vec::fmadd(Vec::loadu(x + j), Vec::loadu(w + j), acc);
  float s = sum_of(acc);
  for (; j < n; ++j) s += x[j] * w[j];
  return s;
}

// PyTorch's hardsigmoid: min(max(x + 3, 0), 6) / 6
inline float hardsigmoid(float x) { return std::min(std::max(x + 3.f, 0.f), 6.f) / 6.f; }

// Column sums over rows [0, n): body(r, partial) adds row r's contributions to `width` float
// partials; every kBlock rows the partials are folded into the calling thread's double totals.
// Returns the totals summed over threads (width doubles).
template <typename Body>
std::vector<double> column_sums(int64_t n, int64_t width, const Body& body) {
  constexpr int64_t kBlock = 128;
  const int threads = at::get_num_threads();
  std::vector<double> totals(static_cast<size_t>(threads) * width, 0.0);
  at::parallel_for(0, n, 256, [&](int64_t begin, int64_t end) {
    double* mine = totals.data() + static_cast<size_t>(at::get_thread_num()) * width;
    std::vector<float> part(width);
    for (int64_t b0 = begin; b0 < end; b0 += kBlock) {
      std::fill(part.begin(), part.end(), 0.f);
      for (int64_t r = b0; r < std::min(end, b0 + kBlock); ++r) body(r, part.data());
      for (int64_t j = 0; j < width; ++j) mine[j] += part[j];
    }
  });
  std::vector<double> out(width, 0.0);
  for (int k = 0; k < threads; ++k)
    for (int64_t j = 0; j < width; ++j) out[j] += totals[static_cast<size_t>(k) * width + j];
  return out;
}

inline at::Tensor as_tensor(const std::vector<double>& v, int64_t rows, int64_t cols) {
  auto t = at::empty({rows, cols}, at::kDouble);
  std::copy(v.begin(), v.end(), t.data_ptr<double>());
  return t;
}

}  // namespace partialnet_kernels
