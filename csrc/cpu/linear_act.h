#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

namespace genkern::cpu {

// y = act(x @ weight^T + bias) for x [M, K], weight [N, K]. Returns (y, preact): preact holds
// the pre-activation when save_preact, else it is empty.
std::tuple<at::Tensor, at::Tensor> linear_act_forward_cpu(const at::Tensor& x,
                                                          const at::Tensor& weight,
                                                          const std::optional<at::Tensor>& bias,
                                                          int64_t activation, double negative_slope,
                                                          bool save_preact);

// out[M, N] = a[M, K] b[K, N] (out's rows contiguous, out.stride(0) apart): genkern's small GEMM
// (small_gemm.h) for float32 on CPUs without AVX-512 where small_gemm_wins, else ATen's mm.
void gemm_into(at::Tensor& out, const at::Tensor& a, const at::Tensor& b);

// (grad_x, grad_weight, grad_bias) from grad_y [M, N] and the saved tensor (y or preact); a
// gradient whose mask entry is false comes back empty.
std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_act_backward_cpu(
    const at::Tensor& grad_y, const std::optional<at::Tensor>& saved, const at::Tensor& x,
    const at::Tensor& weight, int64_t activation, double negative_slope,
    std::array<bool, 3> output_mask);

}  // namespace genkern::cpu
