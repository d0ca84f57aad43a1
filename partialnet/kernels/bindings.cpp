// The Python module of partialnet's CPU kernels: the functions of bn_gelu.cpp, pat_spatial.cpp and one_image.cpp.
#include <torch/extension.h>

#include <vector>

namespace partialnet_kernels {
at::Tensor affine_gelu(const at::Tensor& h, const at::Tensor& s, const at::Tensor& t);
std::vector<at::Tensor> affine_gelu_backward(const at::Tensor& ga, const at::Tensor& h, const at::Tensor& s,
                                             const at::Tensor& t, const at::Tensor& mean, const at::Tensor& invstd);
std::vector<at::Tensor> pat_sp_forward_sums(const at::Tensor& t, const at::Tensor& wg);
void pat_sp_attention_out(const at::Tensor& t, const at::Tensor& g, const at::Tensor& k, const at::Tensor& m,
                          at::Tensor& out);
at::Tensor pat_sp_backward_sums(const at::Tensor& grad, const at::Tensor& t, const at::Tensor& g, int64_t ca);
at::Tensor pat_sp_backward_rows(const at::Tensor& grad, const at::Tensor& t, const at::Tensor& s, const at::Tensor& g,
                                const at::Tensor& wg, const at::Tensor& k, const at::Tensor& c2, const at::Tensor& c3,
                                const at::Tensor& slope, const at::Tensor& offset, at::Tensor& dx);
at::Tensor srm_gate(const at::Tensor& tokens, const at::Tensor& w_mean, const at::Tensor& w_std,
                    const at::Tensor& bias, double eps);
at::Tensor srm_gated_rows(const at::Tensor& tokens, const at::Tensor& w_mean, const at::Tensor& w_std,
                          const at::Tensor& bias, double eps, const at::Tensor& rows);
void pat_sp_finish_(at::Tensor& y, const at::Tensor& w, const at::Tensor& shift, const at::Tensor& scale);
}  // namespace partialnet_kernels

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace pk = partialnet_kernels;
  m.def("affine_gelu", &pk::affine_gelu, "a = gelu(h * s + t) on a contiguous float32 (N, C) matrix");
  m.def("affine_gelu_backward", &pk::affine_gelu_backward,
        "gradient of h through gelu(batch_norm(h)) in training, and the column sums for the affine gradients");
  m.def("pat_sp_forward_sums", &pk::pat_sp_forward_sums, "PAT_sp: gate logits, gate, column sums and squares");
  m.def("pat_sp_attention_out", &pk::pat_sp_attention_out, "PAT_sp: the normalised attention half into out");
  m.def("pat_sp_backward_sums", &pk::pat_sp_backward_sums, "PAT_sp backward: column sums of the gradient");
  m.def("srm_gate", &pk::srm_gate, "PAT_ch's SRM gate of one image from its untouched half's token matrix");
  m.def("srm_gated_rows", &pk::srm_gated_rows, "rows * gate^T for PAT_ch's SRM gate of one image");
  m.def("pat_sp_finish_", &pk::pat_sp_finish_, "PAT_sp's attention half of one image, in place in fc2's output");
  m.def("pat_sp_backward_rows", &pk::pat_sp_backward_rows, "PAT_sp backward: the input gradient's rows");
}
