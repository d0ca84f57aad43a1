// PAT_ch's SRM gate for one image at inference, in one call: from the (n, C_u) token matrix of
// the untouched half (a column block of the image's token matrix: row stride >= C_u), the
// per-channel mean and std over the n positions (two passes, sums in double), then
//   gate = hardsigmoid(bias + mean @ w_mean + std @ w_std)                          (1, C_u)
// with std = sqrt(max(unbiased variance, eps)), as partialnet/deploy/fusion.py's FusedPATChannel
// computes it with PyTorch operators (about ten operator calls per block, which at batch 1 cost
// more than the arithmetic).
#include "vec_common.h"

#include <cmath>

namespace partialnet_kernels {

at::Tensor srm_gate(const at::Tensor& tokens, const at::Tensor& w_mean, const at::Tensor& w_std,
                    const at::Tensor& bias, double eps) {
  TORCH_CHECK(tokens.device().is_cpu() && tokens.scalar_type() == at::kFloat && tokens.dim() == 2 &&
                  tokens.stride(1) == 1 && tokens.stride(0) >= tokens.size(1),
              "tokens must be a float32 CPU matrix with unit column stride");
  const int64_t n = tokens.size(0), cu = tokens.size(1), row = tokens.stride(0);
  TORCH_CHECK(n >= 2, "the SRM statistics need at least two positions");
  check_matrix(w_mean, "w_mean", cu, cu);
  check_matrix(w_std, "w_std", cu, cu);
  check_vector(bias, "bias", cu);
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
  auto gate = at::empty({1, cu}, tokens.options());
  float* gp = gate.data_ptr<float>();
  const float* wm = w_mean.data_ptr<float>();
  const float* ws = w_std.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  for (int64_t j = 0; j < cu; ++j) gp[j] = bp[j];
  for (int64_t i = 0; i < cu; ++i) {  // rows of the weights: contiguous inner loop over j
    const float m = mean[i], s = stdev[i];
    const float* wmr = wm + i * cu;
    const float* wsr = ws + i * cu;
    for (int64_t j = 0; j < cu; ++j) gp[j] += m * wmr[j] + s * wsr[j];
  }
  for (int64_t j = 0; j < cu; ++j) gp[j] = std::min(std::max(gp[j] + 3.f, 0.f), 6.f) / 6.f;
  return gate;
}

}  // namespace partialnet_kernels
