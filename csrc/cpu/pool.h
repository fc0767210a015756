// Pooling and nearest upsampling on the CPU, NCHW and channels_last, forward and backward.
// Index rules, tie and NaN behaviour and averaging divisors are those of ATen's CPU kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>
#include <vector>

namespace genkern::cpu {

// (y, indices, preact): y = act(max pool of x); indices are int64 flat offsets into each input
// plane (H * W), as torch's; preact (the pooled values before the activation) is defined only
// when save_preact (the activation's backward needs its input: see activations.py).
std::tuple<at::Tensor, at::Tensor, at::Tensor> max_pool2d_forward_cpu(
    const at::Tensor& x, std::vector<int64_t> kernel, std::vector<int64_t> stride,
    std::vector<int64_t> padding, std::vector<int64_t> dilation, std::vector<int64_t> out_size,
    int64_t activation, double negative_slope, bool save_preact);
// The same without the indices unless with_indices (float and double: an empty tensor, and no
// index tracked; the 16-bit types return them anyway): for calls that record no graph and return
// no indices.
std::tuple<at::Tensor, at::Tensor, at::Tensor> max_pool2d_forward_opt_indices_cpu(
    const at::Tensor& x, const std::vector<int64_t>& kernel, const std::vector<int64_t>& stride,
    const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation,
    const std::vector<int64_t>& out_size, int64_t activation, double negative_slope,
    bool save_preact, bool with_indices);

// Whether max_pool2d_forward_tap_codes_cpu takes x and these windows: a channels_last x, windows
// that do not overlap (no padding or dilation, kernel <= stride) of at most 255 taps.
bool max_pool2d_takes_tap_codes(const at::Tensor& x, const std::vector<int64_t>& kernel,
                                const std::vector<int64_t>& stride,
                                const std::vector<int64_t>& padding,
                                const std::vector<int64_t>& dilation);
// max_pool2d_forward_cpu recording each maximum as its tap's number in the window (uint8, taps
// row by row over those inside the input) instead of an int64 flat index: an eighth of the bytes
// a training step keeps for the backward, which max_pool2d_backward_cpu reads either way.
std::tuple<at::Tensor, at::Tensor, at::Tensor> max_pool2d_forward_tap_codes_cpu(
    const at::Tensor& x, const std::vector<int64_t>& kernel, const std::vector<int64_t>& stride,
    const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation,
    const std::vector<int64_t>& out_size, int64_t activation, double negative_slope,
    bool save_preact);

// grad_input (uninitialized, in the input's layout) receives the max-pool gradient of
// act_backward(grad_y, saved): a gather where windows do not overlap, else zeros and a
// scatter-add. saved is the activation's output or input (undefined for the identity); indices
// are flat (int64) or tap codes (uint8, see max_pool2d_forward_tap_codes_cpu).
at::Tensor max_pool2d_backward_cpu(const at::Tensor& grad_y, const std::optional<at::Tensor>& saved,
                                   const at::Tensor& indices, const at::Tensor& grad_input,
                                   std::vector<int64_t> kernel, std::vector<int64_t> stride,
                                   std::vector<int64_t> padding, std::vector<int64_t> dilation,
                                   int64_t activation, double negative_slope);

// divisor_override <= 0: none.
at::Tensor avg_pool2d_forward_cpu(const at::Tensor& x, std::vector<int64_t> kernel,
                                  std::vector<int64_t> stride, std::vector<int64_t> padding,
                                  std::vector<int64_t> out_size, bool count_include_pad,
                                  int64_t divisor_override);

// Writes grad_input whole: uninitialized from the caller, in the input's layout.
at::Tensor avg_pool2d_backward_cpu(const at::Tensor& grad_y, const at::Tensor& grad_input,
                                   std::vector<int64_t> kernel, std::vector<int64_t> stride,
                                   std::vector<int64_t> padding, bool count_include_pad,
                                   int64_t divisor_override);

// y[n, c, i, j] = x[n, c, src_h[i], src_w[j]] (int64 source index tables).
at::Tensor upsample_nearest2d_forward_cpu(const at::Tensor& x, const at::Tensor& src_h,
                                          const at::Tensor& src_w);

// grad_input (uninitialized, in the input's layout; src_h / src_w non-decreasing) receives the sum
// of the gradients of the outputs copied from each input pixel.
at::Tensor upsample_nearest2d_backward_cpu(const at::Tensor& grad_y, const at::Tensor& src_h,
                                           const at::Tensor& src_w,
                                           const at::Tensor& grad_input);

}  // namespace genkern::cpu
