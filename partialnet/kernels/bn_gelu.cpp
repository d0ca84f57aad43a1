// Training-mode BatchNorm followed by the exact GELU, fused, on the (N, C) token matrix of a
// channels_last map (float32, CPU). See partialnet/models/layers/bn_gelu.py for the maths and
// for when it is used; the Python side computes the batch statistics (PyTorch's own kernel)
// and the per-channel affine s, t of the normalisation.
//
//   affine_gelu(h, s, t)                               a = gelu(h * s + t)           one pass
//   affine_gelu_backward(ga, h, s, t, mean, invstd)    gradient of h through gelu(bn(h)), two passes
//
// GELU's erf is an odd/even rational function of x on [-4, 4] (erf rounds to +-1 in float32
// beyond), evaluated with FMAs and one division: no exp in the forward pass. The backward needs
// the normal density exp(-y^2 / 2) as well. Column sums are accumulated in double.
#include "vec_common.h"

#include <cmath>

namespace partialnet_kernels {
namespace {

constexpr float kRsqrt2 = 0.70710678118654752f;    // 1 / sqrt(2)
constexpr float kRsqrt2Pi = 0.39894228040143268f;  // 1 / sqrt(2 pi)

// Coefficients of the numerator (odd, x * P(x^2)) and denominator (Q(x^2)) of erf on [-4, 4].
constexpr float kP[7] = {-2.72614225801306e-10f, 2.77068142495902e-08f, -2.10102402082508e-06f,
                         -5.69250639462346e-05f, -7.34990630326855e-04f, -2.95459980854025e-03f,
                         -1.60960333262415e-02f};
constexpr float kQ[5] = {-1.45660718464996e-05f, -2.13374055278905e-04f, -1.68282697438203e-03f,
                         -7.37332916720468e-03f, -1.42647390514189e-02f};

inline Vec erf_vec(Vec x) {
  x = at::vec::minimum(at::vec::maximum(x, Vec(-4.f)), Vec(4.f));
  const Vec x2 = x * x;
  Vec p(kP[0]);
  for (int i = 1; i < 7; ++i) p = at::vec::fmadd(x2, p, Vec(kP[i]));
  Vec q(kQ[0]);
  for (int i = 1; i < 5; ++i) q = at::vec::fmadd(x2, q, Vec(kQ[i]));
  return x * p / q;
}

inline float erf_scalar(float x) {
  x = std::min(std::max(x, -4.f), 4.f);
  const float x2 = x * x;
  float p = kP[0];
  for (int i = 1; i < 7; ++i) p = x2 * p + kP[i];
  float q = kQ[0];
  for (int i = 1; i < 5; ++i) q = x2 * q + kQ[i];
  return x * p / q;
}

inline Vec gelu_vec(const Vec& y) { return Vec(0.5f) * y * (Vec(1.f) + erf_vec(y * Vec(kRsqrt2))); }
inline float gelu_scalar(float y) { return 0.5f * y * (1.f + erf_scalar(y * kRsqrt2)); }

// d gelu(y) / dy = Phi(y) + y * phi(y)
inline Vec gelu_grad_vec(const Vec& y) {
  const Vec cdf = Vec(0.5f) * (Vec(1.f) + erf_vec(y * Vec(kRsqrt2)));
  const Vec pdf = (y * y * Vec(-0.5f)).exp_u20() * Vec(kRsqrt2Pi);
  return at::vec::fmadd(y, pdf, cdf);
}
inline float gelu_grad_scalar(float y) {
  return 0.5f * (1.f + erf_scalar(y * kRsqrt2)) + y * std::exp(-0.5f * y * y) * kRsqrt2Pi;
}

}  // namespace

at::Tensor affine_gelu(const at::Tensor& h, const at::Tensor& s, const at::Tensor& t) {
  const float* hp = check_matrix(h, "h");
  const int64_t n = h.size(0), c = h.size(1);
  const float* sp = check_vector(s, "s", c);
  const float* tp = check_vector(t, "t", c);
  auto a = at::empty_like(h);
  float* ap = a.data_ptr<float>();
  at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* hr = hp + r * c;
      float* ar = ap + r * c;
      int64_t j = 0;
      for (; j + Vec::size() <= c; j += Vec::size())
        gelu_vec(at::vec::fmadd(Vec::loadu(hr + j), Vec::loadu(sp + j), Vec::loadu(tp + j))).store(ar + j);
      for (; j < c; ++j) ar[j] = gelu_scalar(hr[j] * sp[j] + tp[j]);
    }
  });
  return a;
}

// Returns (gh, sums): the gradient of h and a (2, C) float64 matrix of per-column sum(d) and
// sum(d * (h - mean)), d = ga * gelu'(h * s + t) (the gradient of batch norm's output), from which
// the caller takes the affine parameters' gradients.
// gh = s * d - s / n * sum(d) - s * invstd^2 / n * (h - mean) * sum(d * (h - mean)).
std::vector<at::Tensor> affine_gelu_backward(const at::Tensor& ga, const at::Tensor& h, const at::Tensor& s,
                                             const at::Tensor& t, const at::Tensor& mean, const at::Tensor& invstd) {
  const float* hp = check_matrix(h, "h");
  const int64_t n = h.size(0), c = h.size(1);
  const float* gp = check_matrix(ga, "ga", n, c);
  const float* sp = check_vector(s, "s", c);
  const float* tp = check_vector(t, "t", c);
  const float* mp = check_vector(mean, "mean", c);
  const float* ip = check_vector(invstd, "invstd", c);
  auto gh = at::empty_like(h);
  float* op = gh.data_ptr<float>();

  // pass 1: d into gh and its column sums
  const std::vector<double> sums = column_sums(n, 2 * c, [&](int64_t r, float* part) {
    const float* hr = hp + r * c;
    const float* gr = gp + r * c;
    float* orow = op + r * c;
    float* pd = part;
    float* pdc = part + c;
    int64_t j = 0;
    for (; j + Vec::size() <= c; j += Vec::size()) {
      const Vec hv = Vec::loadu(hr + j);
      const Vec d = Vec::loadu(gr + j) * gelu_grad_vec(at::vec::fmadd(hv, Vec::loadu(sp + j), Vec::loadu(tp + j)));
      d.store(orow + j);
      (Vec::loadu(pd + j) + d).store(pd + j);
      at::vec::fmadd(d, hv - Vec::loadu(mp + j), Vec::loadu(pdc + j)).store(pdc + j);
    }
    for (; j < c; ++j) {
      const float d = gr[j] * gelu_grad_scalar(hr[j] * sp[j] + tp[j]);
      orow[j] = d;
      pd[j] += d;
      pdc[j] += d * (hr[j] - mp[j]);
    }
  });

  // pass 2: gh = s * d + k1 + k2 * (h - mean), in place over d
  std::vector<float> k1(c), k2(c);
  for (int64_t j = 0; j < c; ++j) {
    k1[j] = static_cast<float>(-sp[j] * sums[j] / n);
    k2[j] = static_cast<float>(-static_cast<double>(sp[j]) * ip[j] * ip[j] * sums[c + j] / n);
  }
  const float* k1p = k1.data();
  const float* k2p = k2.data();
  at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* hr = hp + r * c;
      float* orow = op + r * c;
      int64_t j = 0;
      for (; j + Vec::size() <= c; j += Vec::size()) {
        const Vec base = at::vec::fmadd(Vec::loadu(sp + j), Vec::loadu(orow + j), Vec::loadu(k1p + j));
        at::vec::fmadd(Vec::loadu(k2p + j), Vec::loadu(hr + j) - Vec::loadu(mp + j), base).store(orow + j);
      }
      for (; j < c; ++j) orow[j] = sp[j] * orow[j] + k1p[j] + k2p[j] * (hr[j] - mp[j]);
    }
  });
  return {gh, as_tensor(sums, 2, c)};
}

}  // namespace partialnet_kernels
