// Eager fast paths of the CPU backend: one pybind11 call runs the op's C++ kernels, through a C++
// autograd Function when a gradient is needed. The torch.library custom op costs tens of
// microseconds of Python dispatch per call (and again for its backward), as much as a small
// layer's whole kernel; genkern/ops/*.py take these paths for plain eager calls only, while
// torch.compile, export, opcheck and dispatch modes see the registered custom ops. Same kernels,
// same results, same output layouts.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

namespace genkern::cpu {

at::Tensor conv2d_act_eager_cpu(const at::Tensor& x, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, std::vector<int64_t> stride,
                                std::vector<int64_t> padding, std::vector<int64_t> dilation,
                                int64_t groups, int64_t activation, double negative_slope,
                                bool channels_last);

at::Tensor conv_transpose2d_act_eager_cpu(const at::Tensor& x, const at::Tensor& weight,
                                          const std::optional<at::Tensor>& bias,
                                          std::vector<int64_t> stride, std::vector<int64_t> padding,
                                          std::vector<int64_t> output_padding,
                                          std::vector<int64_t> dilation, int64_t groups,
                                          int64_t activation, double negative_slope,
                                          bool channels_last);

at::Tensor linear_act_eager_cpu(const at::Tensor& x, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, int64_t activation,
                                double negative_slope);

// y; in training, the running statistics given are updated in place, as
// genkern::batch_norm_update_stats does.
at::Tensor batch_norm_act_eager_cpu(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                    const std::optional<at::Tensor>& bias,
                                    const std::optional<at::Tensor>& running_mean,
                                    const std::optional<at::Tensor>& running_var, bool training,
                                    double momentum, double eps, int64_t activation,
                                    double negative_slope);

// (y, indices) of max_pool2d_forward_cpu (act(max pool)) in x's dense layout, y differentiable
// in x; without with_indices, y alone (and, recording no graph, no index is computed). y of
// avg_pool2d_forward_cpu in x's dense layout, differentiable in x.
std::vector<at::Tensor> max_pool2d_eager_cpu(const at::Tensor& x, std::vector<int64_t> kernel,
                                             std::vector<int64_t> stride,
                                             std::vector<int64_t> padding,
                                             std::vector<int64_t> dilation,
                                             std::vector<int64_t> out_size,
                                             int64_t activation, double negative_slope,
                                             bool with_indices);
at::Tensor avg_pool2d_eager_cpu(const at::Tensor& x, std::vector<int64_t> kernel,
                                std::vector<int64_t> stride, std::vector<int64_t> padding,
                                std::vector<int64_t> out_size, bool count_include_pad,
                                int64_t divisor_override);

// upsample_nearest2d_forward_cpu (src_h / src_w: each output row's and column's source) in the
// layout asked for, differentiable in x.
at::Tensor upsample_nearest2d_eager_cpu(const at::Tensor& x, const at::Tensor& src_h,
                                       const at::Tensor& src_w, bool channels_last);

// A conv fed by a batch norm's output keeps the batch norm's input instead and recomputes the
// output in its backward, except while saved-tensor hooks are active (a checkpoint's rerun must
// save what its forward saved). Tests that watch the saved tensors through a hook of their own
// set this (returns the previous value) to see the recomputation as it runs without hooks.
bool set_recompute_under_saved_tensor_hooks(bool on);

}  // namespace genkern::cpu
