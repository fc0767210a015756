// conv_transpose2d + bias + activation on the CPU: the pattern of conv2d_act.cpp.
// Main loop: ATen's transposed convolution (oneDNN deconvolution), with the bias in its
// accumulators; ours: the activation in one in-place pass over the fresh output, and the
// backward's prologue (activation backward + bias gradient in one pass over grad_y), then one
// convolution_backward(transposed=true) for only the gradients asked for.
#include "conv_transpose2d_act.h"

#include "epilogue.h"

namespace genkern::cpu {

std::tuple<at::Tensor, at::Tensor> conv_transpose2d_act_forward_cpu(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    std::vector<int64_t> stride, std::vector<int64_t> padding, std::vector<int64_t> output_padding,
    std::vector<int64_t> dilation, int64_t groups, int64_t activation, double negative_slope,
    bool save_preact) {
  at::Tensor z = at::convolution(x, weight, bias, stride, padding, dilation, /*transposed=*/true,
                                 output_padding, groups);
  if (!save_preact) {
    activation_(z, activation, negative_slope);
    return {z, at::Tensor()};
  }
  at::Tensor y = at::empty_like(z);
  activation_(z, activation, negative_slope, &y);
  return {y, z};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_transpose2d_act_backward_cpu(
    const at::Tensor& grad_y, const std::optional<at::Tensor>& saved, const at::Tensor& x,
    const at::Tensor& weight, std::vector<int64_t> stride, std::vector<int64_t> padding,
    std::vector<int64_t> output_padding, std::vector<int64_t> dilation, int64_t groups,
    int64_t activation, double negative_slope, std::array<bool, 3> output_mask) {
  auto [g, grad_bias] =
      act_backward_bias_grad(grad_y, saved, activation, negative_slope, output_mask[2]);
  at::Tensor grad_x, grad_w;
  if (output_mask[0] || output_mask[1]) {
    std::tie(grad_x, grad_w, std::ignore) = at::convolution_backward(
        g, x, weight, std::nullopt, stride, padding, dilation, /*transposed=*/true, output_padding,
        groups, {output_mask[0], output_mask[1], false});
  }
  return {grad_x, grad_w, grad_bias};
}

}  // namespace genkern::cpu
