// Straightforward CUDA kernels for StyleGAN2's fused bias activation and upfirdn2d.
// One thread per output element; accumulation in float (at::opmath_type) for half inputs.
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

namespace {

constexpr int kThreads = 256;

inline int64_t blocks_for(int64_t n) { return (n + kThreads - 1) / kThreads; }

template <typename scalar_t>
__global__ void fused_bias_act_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ bias,
                                      scalar_t* __restrict__ out, int64_t n, int64_t step,
                                      int64_t channels, float slope, float scale) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)blockDim.x * gridDim.x) {
    acc_t v = static_cast<acc_t>(x[i]) + static_cast<acc_t>(bias[(i / step) % channels]);
    v = v > acc_t(0) ? v : v * static_cast<acc_t>(slope);
    out[i] = static_cast<scalar_t>(v * static_cast<acc_t>(scale));
  }
}

template <typename scalar_t>
__global__ void upfirdn2d_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ k,
                                 scalar_t* __restrict__ out, int64_t planes, int in_h, int in_w,
                                 int out_h, int out_w, int kh, int kw, int up, int down, int x0,
                                 int y0) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = planes * out_h * out_w;
  const int up_h = in_h * up, up_w = in_w * up;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < n;
       idx += (int64_t)blockDim.x * gridDim.x) {
    const int ox = idx % out_w;
    const int oy = (idx / out_w) % out_h;
    const int64_t plane = idx / ((int64_t)out_w * out_h);
    const scalar_t* src = x + plane * in_h * in_w;
    acc_t acc = 0;
    for (int i = 0; i < kh; ++i) {
      // Position in the zero-inserted (upsampled) signal, before padding.
      const int py = oy * down + i - y0;
      if (py < 0 || py >= up_h || py % up) continue;
      const int sy = py / up;
      for (int j = 0; j < kw; ++j) {
        const int px = ox * down + j - x0;
        if (px < 0 || px >= up_w || px % up) continue;
        // A true convolution: the kernel is read flipped.
        acc += static_cast<acc_t>(src[sy * in_w + px / up]) *
               static_cast<acc_t>(k[(kh - 1 - i) * kw + (kw - 1 - j)]);
      }
    }
    out[idx] = static_cast<scalar_t>(acc);
  }
}

}  // namespace

torch::Tensor fused_bias_act_cuda(const torch::Tensor& x, const torch::Tensor& bias, int64_t step,
                                  double negative_slope, double scale) {
  const c10::cuda::CUDAGuard guard(x.device());
  auto out = torch::empty_like(x);
  const int64_t n = x.numel();
  if (n == 0) return out;
  const int grid = (int)std::min<int64_t>(blocks_for(n), 65535);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fused_bias_act", [&] {
    fused_bias_act_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), n, step,
        bias.numel(), (float)negative_slope, (float)scale);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

torch::Tensor upfirdn2d_cuda(const torch::Tensor& x, const torch::Tensor& kernel, int64_t up,
                             int64_t down, int64_t x0, int64_t x1, int64_t y0, int64_t y1) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t b = x.size(0), c = x.size(1), in_h = x.size(2), in_w = x.size(3);
  const int64_t kh = kernel.size(0), kw = kernel.size(1);
  const int64_t span_h = in_h * up + y0 + y1 - kh, span_w = in_w * up + x0 + x1 - kw;
  TORCH_CHECK(span_h >= 0 && span_w >= 0, "upfirdn2d: padding and kernel leave an empty output");
  const int64_t out_h = span_h / down + 1, out_w = span_w / down + 1;
  auto out = torch::empty({b, c, out_h, out_w}, x.options());
  const int64_t n = out.numel();
  if (n == 0) return out;
  const int grid = (int)std::min<int64_t>(blocks_for(n), 65535);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upfirdn2d", [&] {
    upfirdn2d_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), kernel.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), b * c,
        (int)in_h, (int)in_w, (int)out_h, (int)out_w, (int)kh, (int)kw, (int)up, (int)down,
        (int)x0, (int)y0);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}
