// conv_transpose2d + bias + activation on CUDA: the thin torch glue, as conv2d_act_cuda.cpp.
// Main loop: ATen's transposed convolution (cuDNN's backward-data kernels) without the bias; the
// bias + activation epilogue in one in-place pass (epilogue_glue.h); backward: activation backward
// + bias gradient in one pass over grad_y, then one convolution_backward(transposed=true) for only
// the gradients asked for.
#include "conv_transpose2d_act_cuda.h"

#include <c10/cuda/CUDAGuard.h>

#include "epilogue_glue.h"

namespace genkern::cuda {

std::tuple<at::Tensor, at::Tensor> conv_transpose2d_act_forward_cuda(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    std::vector<int64_t> stride, std::vector<int64_t> padding, std::vector<int64_t> output_padding,
    std::vector<int64_t> dilation, int64_t groups, int64_t activation, double negative_slope,
    bool save_preact) {
  TORCH_CHECK(x.is_cuda() && weight.is_cuda(),
              "genkern: conv_transpose2d_act_forward_cuda expects CUDA tensors");
  const c10::cuda::CUDAGuard device_guard(x.device());
  at::Tensor z = at::convolution(x, weight, std::nullopt, stride, padding, dilation,
                                 /*transposed=*/true, output_padding, groups);
  if (!save_preact) {
    bias_act_cuda_(z, bias, activation, negative_slope);
    return {z, at::Tensor()};
  }
  at::Tensor y = at::empty_like(z);
  bias_act_cuda_(z, bias, activation, negative_slope, &y);
  return {y, z};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_transpose2d_act_backward_cuda(
    const at::Tensor& grad_y, const std::optional<at::Tensor>& saved, const at::Tensor& x,
    const at::Tensor& weight, std::vector<int64_t> stride, std::vector<int64_t> padding,
    std::vector<int64_t> output_padding, std::vector<int64_t> dilation, int64_t groups,
    int64_t activation, double negative_slope, std::array<bool, 3> output_mask) {
  TORCH_CHECK(x.is_cuda() && weight.is_cuda(),
              "genkern: conv_transpose2d_act_backward_cuda expects CUDA tensors");
  const c10::cuda::CUDAGuard device_guard(grad_y.device());
  auto [g, grad_bias] =
      act_backward_bias_grad_cuda(grad_y, saved, activation, negative_slope, output_mask[2]);
  at::Tensor grad_x, grad_w;
  if (output_mask[0] || output_mask[1]) {
    std::tie(grad_x, grad_w, std::ignore) = at::convolution_backward(
        g, x, weight, std::nullopt, stride, padding, dilation, /*transposed=*/true, output_padding,
        groups, {output_mask[0], output_mask[1], false});
  }
  return {grad_x, grad_w, grad_bias};
}

}  // namespace genkern::cuda
