#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

namespace genkern::cpu {

// y = act(conv_transpose2d(x, w) + bias), weight [C_in, C_out / groups, kH, kW]. Returns (y,
// preact): preact holds the pre-activation when save_preact, else it is empty.
std::tuple<at::Tensor, at::Tensor> conv_transpose2d_act_forward_cpu(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    std::vector<int64_t> stride, std::vector<int64_t> padding, std::vector<int64_t> output_padding,
    std::vector<int64_t> dilation, int64_t groups, int64_t activation, double negative_slope,
    bool save_preact);

// (grad_x, grad_weight, grad_bias) from grad_y and the saved tensor (y or preact); a gradient
// whose mask entry is false comes back empty.
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_transpose2d_act_backward_cpu(
    at::Tensor grad_y, const std::optional<at::Tensor>& saved, const at::Tensor& x,
    const at::Tensor& weight, std::vector<int64_t> stride, std::vector<int64_t> padding,
    std::vector<int64_t> output_padding, std::vector<int64_t> dilation, int64_t groups,
    int64_t activation, double negative_slope, std::array<bool, 3> output_mask);

}  // namespace genkern::cpu
