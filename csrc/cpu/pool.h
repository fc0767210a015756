// Pooling and nearest upsampling on the CPU, NCHW and channels_last, forward and backward.
// Index rules, tie and NaN behaviour and averaging divisors are those of ATen's CPU kernels.
#pragma once

#include <ATen/ATen.h>

#include <tuple>
#include <vector>

namespace genkern::cpu {

// (y, indices): indices are int64 flat offsets into each input plane (H * W), as torch's.
std::tuple<at::Tensor, at::Tensor> max_pool2d_forward_cpu(const at::Tensor& x,
                                                          std::vector<int64_t> kernel,
                                                          std::vector<int64_t> stride,
                                                          std::vector<int64_t> padding,
                                                          std::vector<int64_t> dilation,
                                                          std::vector<int64_t> out_size);

// grad_input (uninitialized, in the input's layout) receives the max-pool gradient: a gather where
// windows do not overlap, else zeros and a scatter-add.
at::Tensor max_pool2d_backward_cpu(const at::Tensor& grad_y, const at::Tensor& indices,
                                   const at::Tensor& grad_input, std::vector<int64_t> kernel,
                                   std::vector<int64_t> stride, std::vector<int64_t> padding,
                                   std::vector<int64_t> dilation);

// divisor_override <= 0: none.
at::Tensor avg_pool2d_forward_cpu(const at::Tensor& x, std::vector<int64_t> kernel,
                                  std::vector<int64_t> stride, std::vector<int64_t> padding,
                                  std::vector<int64_t> out_size, bool count_include_pad,
                                  int64_t divisor_override);

// Accumulates into grad_input, zero-filled by the caller in the input's layout.
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
