// linear + bias + activation on the CPU: the pattern of conv2d_act.cpp for a plain GEMM.
// Main loop: ATen's addmm (MKL/oneDNN sgemm, bias inside the GEMM: beta * bias broadcast into C
// before accumulation), then the activation in one in-place pass over the [M, N] output. Backward:
// activation backward + bias gradient (column sums) in one pass over grad_y, then one mm per
// gradient asked for.
#include "linear_act.h"

#include "epilogue.h"

namespace genkern::cpu {

std::tuple<at::Tensor, at::Tensor> linear_act_forward_cpu(const at::Tensor& x,
                                                          const at::Tensor& weight,
                                                          const std::optional<at::Tensor>& bias,
                                                          int64_t activation, double negative_slope,
                                                          bool save_preact) {
  const bool has_bias = bias.has_value() && bias->defined();
  at::Tensor z = has_bias ? at::addmm(*bias, x, weight.t()) : at::mm(x, weight.t());
  if (!save_preact) {
    activation_(z, activation, negative_slope);
    return {z, at::Tensor()};
  }
  at::Tensor y = at::empty_like(z);
  activation_(z, activation, negative_slope, &y);
  return {y, z};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_act_backward_cpu(
    const at::Tensor& grad_y, const std::optional<at::Tensor>& saved, const at::Tensor& x,
    const at::Tensor& weight, int64_t activation, double negative_slope,
    std::array<bool, 3> output_mask) {
  auto [g, grad_bias] =
      act_backward_bias_grad(grad_y, saved, activation, negative_slope, output_mask[2]);
  at::Tensor grad_x = output_mask[0] ? at::mm(g, weight) : at::Tensor();
  at::Tensor grad_w = output_mask[1] ? at::mm(g.t(), x) : at::Tensor();
  return {grad_x, grad_w, grad_bias};
}

}  // namespace genkern::cpu
