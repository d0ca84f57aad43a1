// PAT_sp's training passes over the (N, C) token matrix of a channels_last map (float32, CPU),
// attention half in columns [0, ca), conv half in [ca, C). See
// partialnet/models/layers/pat_spatial_tokens.py for the maths; the conv half's matrix products
// (MKL, on column blocks) and the per-channel algebra stay on the Python side.
//
//   pat_sp_forward_sums(t, wg)                    logits s, gate g = hardsigmoid(s) (N each), and per column
//                                                 of v = p = x_a * g | x_c: sum(v - v0), sum((v - v0)^2) and
//                                                 the shift v0 (row 0), as a (3, C) double matrix (the shift
//                                                 keeps the variance exact when a column's mean is far from 0)
//   pat_sp_attention_out(t, g, k, m, out)         out[:, :ca] = x_a * g * k + m
//   pat_sp_backward_sums(grad, t, g, ca)          per column sum of grad, and sum(grad_a * p) ((2, C) double)
//   pat_sp_backward_rows(grad, t, s, g, wg, k, c2, c3, slope, offset, dx)
//                                                 dx[:, :ca] = dp * g + ds * wg with dp = k grad_a + c2 p + c3,
//                                                 ds = hardsigmoid'(s) * sum_j dp x_a; dx[:, ca:] = x_c * slope + offset;
//                                                 returns dwg = sum_n x_a * ds
#include "vec_common.h"

namespace partialnet_kernels {
std::vector<at::Tensor> pat_sp_forward_sums(const at::Tensor& t, const at::Tensor& wg) {
  const float* tp = check_matrix(t, "t");
  const int64_t n = t.size(0), c = t.size(1), ca = wg.numel();
  const float* wp = check_vector(wg, "wg", ca);
  check_split(ca, c, true);
  auto s = at::empty({n}, t.options());
  auto g = at::empty({n}, t.options());
  float* sp = s.data_ptr<float>();
  float* gp = g.data_ptr<float>();
  std::vector<float> shift(c);  // row 0's values of v
  const float gate0 = hardsigmoid(dot(tp, wp, ca));
  for (int64_t j = 0; j < c; ++j) shift[j] = j < ca ? tp[j] * gate0 : tp[j];
  const float* hp = shift.data();
  std::vector<double> sums = column_sums(n, 2 * c, [&](int64_t r, float* part) {
    const float* xr = tp + r * c;
    float* sum = part;
    float* sq = part + c;
    const float logit = dot(xr, wp, ca);
    const float gate = hardsigmoid(logit);
    sp[r] = logit;
    gp[r] = gate;
    const Vec gv(gate);
    int64_t j = 0;
    for (; j + Vec::size() <= ca; j += Vec::size()) {
      const Vec d = Vec::loadu(xr + j) * gv - Vec::loadu(hp + j);
      (Vec::loadu(sum + j) + d).store(sum + j);
      at::vec::fmadd(d, d, Vec::loadu(sq + j)).store(sq + j);
    }
    for (; j < ca; ++j) {
      const float d = xr[j] * gate - hp[j];
      sum[j] += d;
      sq[j] += d * d;
    }
    for (; j + Vec::size() <= c; j += Vec::size()) {
      const Vec d = Vec::loadu(xr + j) - Vec::loadu(hp + j);
      (Vec::loadu(sum + j) + d).store(sum + j);
      at::vec::fmadd(d, d, Vec::loadu(sq + j)).store(sq + j);
    }
    for (; j < c; ++j) {
      const float d = xr[j] - hp[j];
      sum[j] += d;
      sq[j] += d * d;
    }
  });
  sums.insert(sums.end(), shift.begin(), shift.end());
  return {s, g, as_tensor(sums, 3, c)};
}

void pat_sp_attention_out(const at::Tensor& t, const at::Tensor& g, const at::Tensor& k, const at::Tensor& m,
                          at::Tensor& out) {
  const float* tp = check_matrix(t, "t");
  const int64_t n = t.size(0), c = t.size(1), ca = k.numel();
  check_split(ca, c, false);
  check_matrix(out, "out", n, c);
  const float* gp = check_vector(g, "g", n);
  const float* kp = check_vector(k, "k", ca);
  const float* mp = check_vector(m, "m", ca);
  float* op = out.data_ptr<float>();
  at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = tp + r * c;
      float* orow = op + r * c;
      const Vec gv(gp[r]);
      int64_t j = 0;
      for (; j + Vec::size() <= ca; j += Vec::size())
        at::vec::fmadd(Vec::loadu(xr + j) * gv, Vec::loadu(kp + j), Vec::loadu(mp + j)).store(orow + j);
      for (; j < ca; ++j) orow[j] = xr[j] * gp[r] * kp[j] + mp[j];
    }
  });
}

at::Tensor pat_sp_backward_sums(const at::Tensor& grad, const at::Tensor& t, const at::Tensor& g, int64_t ca) {
  const float* tp = check_matrix(t, "t");
  const int64_t n = t.size(0), c = t.size(1);
  const float* dp = check_matrix(grad, "grad", n, c);
  const float* gp = check_vector(g, "g", n);
  check_split(ca, c, true);
  const std::vector<double> sums = column_sums(n, 2 * c, [&](int64_t r, float* part) {
    const float* xr = tp + r * c;
    const float* dr = dp + r * c;
    float* sum = part;
    float* cross = part + c;
    const Vec gv(gp[r]);
    int64_t j = 0;
    for (; j + Vec::size() <= ca; j += Vec::size()) {
      const Vec d = Vec::loadu(dr + j);
      (Vec::loadu(sum + j) + d).store(sum + j);
      at::vec::fmadd(d, Vec::loadu(xr + j) * gv, Vec::loadu(cross + j)).store(cross + j);
    }
    for (; j < ca; ++j) {
      sum[j] += dr[j];
      cross[j] += dr[j] * xr[j] * gp[r];
    }
    for (; j + Vec::size() <= c; j += Vec::size()) (Vec::loadu(sum + j) + Vec::loadu(dr + j)).store(sum + j);
    for (; j < c; ++j) sum[j] += dr[j];
  });
  return as_tensor(sums, 2, c);
}

at::Tensor pat_sp_backward_rows(const at::Tensor& grad, const at::Tensor& t, const at::Tensor& s, const at::Tensor& g,
                                const at::Tensor& wg, const at::Tensor& k, const at::Tensor& c2, const at::Tensor& c3,
                                const at::Tensor& slope, const at::Tensor& offset, at::Tensor& dx) {
  const float* tp = check_matrix(t, "t");
  const int64_t n = t.size(0), c = t.size(1), ca = wg.numel(), cc = c - ca;
  check_split(ca, c, true);
  const float* dp = check_matrix(grad, "grad", n, c);
  check_matrix(dx, "dx", n, c);
  const float* sp = check_vector(s, "s", n);
  const float* gp = check_vector(g, "g", n);
  const float* wp = check_vector(wg, "wg", ca);
  const float* kp = check_vector(k, "k", ca);
  const float* c2p = check_vector(c2, "c2", ca);
  const float* c3p = check_vector(c3, "c3", ca);
  const float* slp = check_vector(slope, "slope", cc);
  const float* ofp = check_vector(offset, "offset", cc);
  float* xp = dx.data_ptr<float>();
  const std::vector<double> dwg = column_sums(n, ca, [&](int64_t r, float* part) {
    const float* xr = tp + r * c;
    const float* dr = dp + r * c;
    float* out = xp + r * c;
    const float gate = gp[r];
    const Vec gv(gate);
    // dp = k * grad_a + c2 * p + c3; out = dp * gate for now; dgate = sum_j dp * x_a
    Vec acc(0.f);
    int64_t j = 0;
    for (; j + Vec::size() <= ca; j += Vec::size()) {
      const Vec x = Vec::loadu(xr + j);
      const Vec d = at::vec::fmadd(Vec::loadu(kp + j), Vec::loadu(dr + j),
                                   at::vec::fmadd(Vec::loadu(c2p + j), x * gv, Vec::loadu(c3p + j)));
      acc = at::vec::fmadd(d, x, acc);
      (d * gv).store(out + j);
    }
    float dgate = sum_of(acc);
    for (; j < ca; ++j) {
      const float d = kp[j] * dr[j] + c2p[j] * xr[j] * gate + c3p[j];
      dgate += d * xr[j];
      out[j] = d * gate;
    }
    const float ds = (sp[r] > -3.f && sp[r] < 3.f) ? dgate / 6.f : 0.f;
    const Vec dsv(ds);
    for (j = 0; j + Vec::size() <= ca; j += Vec::size()) {
      at::vec::fmadd(dsv, Vec::loadu(wp + j), Vec::loadu(out + j)).store(out + j);
      at::vec::fmadd(Vec::loadu(xr + j), dsv, Vec::loadu(part + j)).store(part + j);
    }
    for (; j < ca; ++j) {
      out[j] += ds * wp[j];
      part[j] += xr[j] * ds;
    }
    for (j = 0; j + Vec::size() <= cc; j += Vec::size())
      at::vec::fmadd(Vec::loadu(xr + ca + j), Vec::loadu(slp + j), Vec::loadu(ofp + j)).store(out + ca + j);
    for (; j < cc; ++j) out[ca + j] = xr[ca + j] * slp[j] + ofp[j];
  });
  return as_tensor(dwg, 1, ca).view({ca}).to(at::kFloat);
}

}  // namespace partialnet_kernels
