// Python bindings of the optional compiled StyleGAN2 ops (see deltaedit/nn/ops.py).
#include <torch/extension.h>

torch::Tensor fused_bias_act_cuda(const torch::Tensor& x, const torch::Tensor& bias, int64_t step,
                                  double negative_slope, double scale);
torch::Tensor upfirdn2d_cuda(const torch::Tensor& x, const torch::Tensor& kernel, int64_t up,
                             int64_t down, int64_t x0, int64_t x1, int64_t y0, int64_t y1);

static void check_input(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

torch::Tensor fused_bias_act(const torch::Tensor& x, const torch::Tensor& bias, int64_t step,
                             double negative_slope, double scale) {
  check_input(x, "x");
  check_input(bias, "bias");
  TORCH_CHECK(bias.dim() == 1 && bias.numel() > 0, "bias must be a non-empty vector");
  TORCH_CHECK(x.scalar_type() == bias.scalar_type(), "x and bias must share a dtype");
  TORCH_CHECK(step > 0, "step must be positive");
  return fused_bias_act_cuda(x, bias, step, negative_slope, scale);
}

torch::Tensor upfirdn2d(const torch::Tensor& x, const torch::Tensor& kernel, int64_t up, int64_t down,
                        int64_t x0, int64_t x1, int64_t y0, int64_t y1) {
  check_input(x, "x");
  check_input(kernel, "kernel");
  TORCH_CHECK(x.dim() == 4, "x must be [B, C, H, W]");
  TORCH_CHECK(kernel.dim() == 2, "kernel must be 2-D");
  TORCH_CHECK(x.scalar_type() == kernel.scalar_type(), "x and kernel must share a dtype");
  TORCH_CHECK(up >= 1 && down >= 1, "up and down must be >= 1");
  return upfirdn2d_cuda(x, kernel, up, down, x0, x1, y0, y1);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fused_bias_act", &fused_bias_act, "leaky_relu(x + bias) * scale (CUDA)");
  m.def("upfirdn2d", &upfirdn2d, "upsample, pad, FIR filter, downsample (CUDA)");
}
