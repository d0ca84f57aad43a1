// Kernels for one image at inference (partialnet/deploy/fusion.py's fused modules on the image's
// (n, C) token matrix), each one call where PyTorch operators need several: at batch 1 every
// operator call costs a few microseconds, as much as the arithmetic of these steps.
//
// srm_gate: PAT_ch's SRM gate, from the (n, C_u) token block of the untouched half (row stride
// >= C_u): the per-channel mean and std over the n positions (two passes, sums in double), then
//   gate = hardsigmoid(bias + mean @ w_mean + std @ w_std)                          (1, C_u)
// with std = sqrt(max(unbiased variance, eps)), as FusedPATChannel computes it with operators
// (about ten calls). srm_gated_rows returns rows * gate^T instead (the gate scaling the rows of
// fc1's weight block that reads the untouched half, as FusedBlock uses it).
//
// pat_sp_finish_: PAT_sp's attention half in place in fc2's (n, C) output y, columns [0, ca):
//   y_a = y_a * hardsigmoid(y_a . w) [* scale] + shift                (five operator calls otherwise)
#include "vec_common.h"

#include <cmath>

namespace partialnet_kernels {

namespace {

std::vector<float> gate_of(const at::Tensor& tokens, const at::Tensor& w_mean, const at::Tensor& w_std,
                           const at::Tensor& bias, double eps) {
  TORCH_CHECK(tokens.device().is_cpu() && tokens.scalar_type() == at::kFloat && tokens.dim() == 2 &&
                  tokens.stride(1) == 1 && tokens.stride(0) >= tokens.size(1),
              "tokens must be a float32 CPU matrix with unit column stride");
  const int64_t n = tokens.size(0), cu = tokens.size(1), row = tokens.stride(0);
  TORCH_CHECK(n >= 2, "the SRM statistics need at least two positions");
  const float* wm = check_matrix(w_mean, "w_mean", cu, cu);
  const float* ws = check_matrix(w_std, "w_std", cu, cu);
  const float* bp = check_vector(bias, "bias", cu);
  const float* tp = tokens.data_ptr<float>();
  const std::vector<double> sum = column_sums(n, cu, [&](int64_t r, float* part) {
    const float* xr = tp + r * row;
    for (int64_t j = 0; j < cu; ++j) part[j] += xr[j];
  });
  std::vector<float> mean(cu), stdev(cu);
  for (int64_t j = 0; j < cu; ++j) mean[j] = static_cast<float>(sum[j] / n);
  const float* mp = mean.data();
  const std::vector<double> sq = column_sums(n, cu, [&](int64_t r, float* part) {
    const float* xr = tp + r * row;
    for (int64_t j = 0; j < cu; ++j) {
      const float d = xr[j] - mp[j];
      part[j] += d * d;
    }
  });
  for (int64_t j = 0; j < cu; ++j) stdev[j] = static_cast<float>(std::sqrt(std::max(sq[j] / (n - 1), eps)));
  std::vector<float> gate(cu);
  float* gp = gate.data();
  for (int64_t j = 0; j < cu; ++j) gp[j] = bp[j];
  for (int64_t i = 0; i < cu; ++i) {  // rows of the weights: contiguous inner loop over j
    const float m = mean[i], s = stdev[i];
    const float* wmr = wm + i * cu;
    const float* wsr = ws + i * cu;
    for (int64_t j = 0; j < cu; ++j) gp[j] += m * wmr[j] + s * wsr[j];
  }
  for (int64_t j = 0; j < cu; ++j) gp[j] = hardsigmoid(gp[j]);
  return gate;
}

}  // namespace

at::Tensor srm_gate(const at::Tensor& tokens, const at::Tensor& w_mean, const at::Tensor& w_std,
                    const at::Tensor& bias, double eps) {
  const std::vector<float> g = gate_of(tokens, w_mean, w_std, bias, eps);
  auto gate = at::empty({1, static_cast<int64_t>(g.size())}, tokens.options());
  std::copy(g.begin(), g.end(), gate.data_ptr<float>());
  return gate;
}

at::Tensor srm_gated_rows(const at::Tensor& tokens, const at::Tensor& w_mean, const at::Tensor& w_std,
                          const at::Tensor& bias, double eps, const at::Tensor& rows) {
  const std::vector<float> g = gate_of(tokens, w_mean, w_std, bias, eps);
  const int64_t cu = static_cast<int64_t>(g.size());
  const float* rp = check_matrix(rows, "rows");
  TORCH_CHECK(rows.size(0) == cu, "rows must have one row per untouched channel");
  const int64_t width = rows.size(1);
  auto out = at::empty_like(rows);
  float* op = out.data_ptr<float>();
  for (int64_t i = 0; i < cu; ++i) {
    const Vec gv(g[i]);
    int64_t j = 0;
    for (; j + Vec::size() <= width; j += Vec::size()) (Vec::loadu(rp + i * width + j) * gv).store(op + i * width + j);
    for (; j < width; ++j) op[i * width + j] = rp[i * width + j] * g[i];
  }
  return out;
}

void pat_sp_finish_(at::Tensor& y, const at::Tensor& w, const at::Tensor& shift, const at::Tensor& scale) {
  check_matrix(y, "y");
  const int64_t n = y.size(0), c = y.size(1), ca = w.numel();
  check_split(ca, c, false);
  const float* wp = check_vector(w, "w", ca);
  const float* sp = check_vector(shift, "shift", ca);
  const bool scaled = scale.numel() > 0;
  if (scaled) check_vector(scale, "scale", ca);
  float* yp = y.data_ptr<float>();
  const float* kp = scaled ? scale.data_ptr<float>() : nullptr;
  at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* yr = yp + r * c;
      const float g = hardsigmoid(dot(yr, wp, ca));
      const Vec gv(g);
      int64_t j = 0;
      for (; j + Vec::size() <= ca; j += Vec::size()) {
        Vec v = Vec::loadu(yr + j) * gv;
        if (scaled) v = v * Vec::loadu(kp + j);
        (v + Vec::loadu(sp + j)).store(yr + j);
      }
      for (; j < ca; ++j) yr[j] = yr[j] * g * (scaled ? kp[j] : 1.f) + sp[j];
    }
  });
}

}  // namespace partialnet_kernels
