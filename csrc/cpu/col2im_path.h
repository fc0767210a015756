// A transposed convolution onto few channels (a decoder's or generator's last layer, 32-64 -> 1-3
// channels, and the input gradient of an encoder's or discriminator's first conv, which is the
// same computation) runs 1.8-4.5x faster as ATen's GEMM + col2im kernel (slow_conv_transpose2d)
// than as oneDNN's deconvolution: measured in float32 on this project's 2-core AVX-512 Xeon over
// 1-16 output channels, 16-128 input channels, 3x3/4x4/5x5 kernels, strides 1-2,
// both layouts (benchmarks/README.md). Everything else stays on at::convolution.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

namespace genkern::cpu {

// GENKERN_CPU_COL2IM: 0 never, 1 auto (the measured rule below), 2 always (any one-group
// float32/float64 call: how the tests run every shape through this path).
enum class Col2imMode : int64_t { kNever = 0, kAuto = 1, kAlways = 2 };
void set_col2im_mode(int64_t mode);
int64_t col2im_mode();

// Whether a transposed conv of x [N, in_channels, ..] with this weight goes through col2im.
bool use_col2im(const at::Tensor& x, const at::Tensor& weight, int64_t groups);

// conv_transpose2d(x, weight, bias) (weight [C_in, C_out, kH, kW], one group) through ATen's
// GEMM + col2im kernel, in the memory format at::convolution gives the same arguments.
at::Tensor conv_transpose2d_col2im(const at::Tensor& x, const at::Tensor& weight,
                                   const std::optional<at::Tensor>& bias,
                                   const std::vector<int64_t>& stride,
                                   const std::vector<int64_t>& padding,
                                   const std::vector<int64_t>& output_padding,
                                   const std::vector<int64_t>& dilation);

// The input gradient of conv2d(x, weight) (weight [C_out, C_in, kH, kW], one group) from the
// output gradient g: the transposed conv of g onto x's size, through the kernel above.
at::Tensor conv2d_input_grad_col2im(const at::Tensor& g, const at::Tensor& x,
                                    const at::Tensor& weight, const std::vector<int64_t>& stride,
                                    const std::vector<int64_t>& padding,
                                    const std::vector<int64_t>& dilation);

}  // namespace genkern::cpu
