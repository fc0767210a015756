// batch_norm + activation, pooling and nearest upsampling on CUDA: the torch glue (built only
// against a CUDA build of torch) over the torch-free kernels of norm_pool_kernels.cu. The
// per-channel coefficient math of batch_norm (a few C-element ops) is composed in Python
// (genkern/ops/batch_norm.py), as for the Triton backend; these are its four passes.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>
#include <vector>

namespace genkern::cuda {

// (mean, biased var) per channel of a dense x (NCHW-like or channels_last), float (double for
// double x).
std::tuple<at::Tensor, at::Tensor> batch_norm_stats_cuda(const at::Tensor& x);
// (y, preact): y = act(x * scale[c] + shift[c]); preact empty unless save_preact.
std::tuple<at::Tensor, at::Tensor> batch_norm_apply_cuda(const at::Tensor& x,
                                                         const at::Tensor& scale,
                                                         const at::Tensor& shift,
                                                         int64_t activation, double negative_slope,
                                                         bool save_preact);
// (sum g, sum g * (x - mean)) per channel, g = act_backward(grad_y, saved).
std::tuple<at::Tensor, at::Tensor> batch_norm_backward_reduce_cuda(
    const at::Tensor& grad_y, const std::optional<at::Tensor>& saved, const at::Tensor& x,
    const at::Tensor& mean, int64_t activation, double negative_slope);
// grad_x = ka[c] * g + kb[c] * x + kc[c].
at::Tensor batch_norm_backward_apply_cuda(const at::Tensor& grad_y,
                                          const std::optional<at::Tensor>& saved,
                                          const at::Tensor& x, const at::Tensor& ka,
                                          const at::Tensor& kb, const at::Tensor& kc,
                                          int64_t activation, double negative_slope);

std::tuple<at::Tensor, at::Tensor> max_pool2d_forward_cuda(const at::Tensor& x,
                                                           std::vector<int64_t> kernel,
                                                           std::vector<int64_t> stride,
                                                           std::vector<int64_t> padding,
                                                           std::vector<int64_t> dilation,
                                                           std::vector<int64_t> out_size);
// The backward entry points write every element of grad_input (in the input's layout).
at::Tensor max_pool2d_backward_cuda(const at::Tensor& grad_y, const at::Tensor& indices,
                                    const at::Tensor& grad_input, std::vector<int64_t> kernel,
                                    std::vector<int64_t> stride, std::vector<int64_t> padding,
                                    std::vector<int64_t> dilation);
at::Tensor avg_pool2d_forward_cuda(const at::Tensor& x, std::vector<int64_t> kernel,
                                   std::vector<int64_t> stride, std::vector<int64_t> padding,
                                   std::vector<int64_t> out_size, bool count_include_pad,
                                   int64_t divisor_override);
at::Tensor avg_pool2d_backward_cuda(const at::Tensor& grad_y, const at::Tensor& grad_input,
                                    std::vector<int64_t> kernel, std::vector<int64_t> stride,
                                    std::vector<int64_t> padding, bool count_include_pad,
                                    int64_t divisor_override);
at::Tensor upsample_nearest2d_forward_cuda(const at::Tensor& x, const at::Tensor& src_h,
                                           const at::Tensor& src_w);
at::Tensor upsample_nearest2d_backward_cuda(const at::Tensor& grad_y, const at::Tensor& h_lo,
                                            const at::Tensor& h_hi, const at::Tensor& w_lo,
                                            const at::Tensor& w_hi, const at::Tensor& grad_input);

}  // namespace genkern::cuda
