// The torch glue of the CUDA epilogue kernels (epilogue_kernels.cuh), shared by every GEMM-shaped
// op on CUDA (conv2d, conv_transpose2d, linear): the CUDA mirror of csrc/cpu/epilogue.h. Checks,
// allocates through torch's caching allocator and launches on the current stream, with no host
// synchronization (capturable in a CUDA graph). Built only against a CUDA build of torch.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace genkern::cuda {

// z <- act(z + bias) in place, one pass over the fresh output of a GEMM-shaped op (dense: NCHW,
// channels_last or [M, C]). bias may be empty (the main loop added it, or there is none). When
// act_out (same shape and strides) is given, z keeps z + bias, the pre-activation the backward
// needs, and act(z + bias) goes to *act_out.
void bias_act_cuda_(at::Tensor& z, const std::optional<at::Tensor>& bias, int64_t activation,
                    double negative_slope, at::Tensor* act_out = nullptr);

// (g, bias_grad): g = act_backward(grad_y, saved) in one pass (g is grad_y itself for the
// identity), with the bias gradient (sum of g over every dim but 1) reduced in the same pass when
// need_bias_grad. Deterministic (a fixed two-level reduction, no atomics).
std::tuple<at::Tensor, at::Tensor> act_backward_bias_grad_cuda(
    const at::Tensor& grad_y, const std::optional<at::Tensor>& saved, int64_t activation,
    double negative_slope, bool need_bias_grad);

}  // namespace genkern::cuda
