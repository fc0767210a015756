// linear + bias + activation on CUDA: the thin torch glue.
// Main loop: ATen's addmm, i.e. cuBLAS(Lt) with the bias in the GEMM's epilogue (as stock
// F.linear, so the pre-activation rounds exactly as stock's), then the activation in one in-place
// pass (epilogue_glue.h). Backward: activation backward + bias gradient (column sums of g, a
// deterministic two-level reduction) in one pass over grad_y, then one cuBLAS mm per gradient asked
// for.
#include "linear_act_cuda.h"

#include <c10/cuda/CUDAGuard.h>

#include "epilogue_glue.h"

namespace genkern::cuda {

std::tuple<at::Tensor, at::Tensor> linear_act_forward_cuda(const at::Tensor& x,
                                                           const at::Tensor& weight,
                                                           const std::optional<at::Tensor>& bias,
                                                           int64_t activation,
                                                           double negative_slope,
                                                           bool save_preact) {
  TORCH_CHECK(x.is_cuda() && weight.is_cuda(),
              "genkern: linear_act_forward_cuda expects CUDA tensors");
  const c10::cuda::CUDAGuard device_guard(x.device());
  const bool has_bias = bias.has_value() && bias->defined();
  at::Tensor z = has_bias ? at::addmm(*bias, x, weight.t()) : at::mm(x, weight.t());
  if (!save_preact) {
    bias_act_cuda_(z, std::nullopt, activation, negative_slope);
    return {z, at::Tensor()};
  }
  at::Tensor y = at::empty_like(z);
  bias_act_cuda_(z, std::nullopt, activation, negative_slope, &y);
  return {y, z};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_act_backward_cuda(
    const at::Tensor& grad_y, const std::optional<at::Tensor>& saved, const at::Tensor& x,
    const at::Tensor& weight, int64_t activation, double negative_slope,
    std::array<bool, 3> output_mask) {
  TORCH_CHECK(x.is_cuda() && weight.is_cuda(),
              "genkern: linear_act_backward_cuda expects CUDA tensors");
  const c10::cuda::CUDAGuard device_guard(grad_y.device());
  auto [g, grad_bias] =
      act_backward_bias_grad_cuda(grad_y, saved, activation, negative_slope, output_mask[2]);
  at::Tensor grad_x = output_mask[0] ? at::mm(g, weight) : at::Tensor();
  at::Tensor grad_w = output_mask[1] ? at::mm(g.t(), x) : at::Tensor();
  return {grad_x, grad_w, grad_bias};
}

}  // namespace genkern::cuda
