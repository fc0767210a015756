// A transposed convolution with many input channels over a small input (a generator's 512 -> 256
// channel, 4x4 -> 8x8 layer) as one batched GEMM and a col2im gather: cols[(n, ih, iw), (co, kh,
// kw)] = x[(n, ih, iw), ci] @ weight[ci, (co, kh, kw)], then each output pixel sums the taps that
// land on it (columns in (kh, kw, co) order instead for a channels_last weight: the weight's memory
// order). oneDNN's deconvolution runs such layers at about half the matmul peak; the GEMM
// runs at ~90% of it (K = C_in is long, M = N*H*W spans the batch). The backward is the same
// GEMMs on an im2col of the output gradient: grad_x rows = D @ weight^T, grad_w = x^T D. Batches
// are processed in chunks that bound the column buffer (kColumnFloats). Deterministic: fixed
// chunking, every output pixel summed by one thread in a fixed tap order.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <utility>
#include <vector>

namespace genkern::cpu {

// GENKERN_CPU_CONV_GEMM: 0 never, 1 auto (the measured rule, see use_conv_gemm), 2 always
// (any one-group float32/float64 call: how the tests run every shape through this path).
void set_conv_gemm_mode(int64_t mode);
int64_t conv_gemm_mode();

// Whether conv_transpose2d(x, weight) with these groups goes through the batched GEMM path.
bool use_conv_gemm(const at::Tensor& x, const at::Tensor& weight, int64_t groups);

// conv_transpose2d(x, weight, bias) (weight [C_in, C_out, kH, kW], one group), in the memory
// format at::convolution gives the same arguments.
at::Tensor conv_transpose2d_gemm(const at::Tensor& x, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias,
                                 const std::vector<int64_t>& stride,
                                 const std::vector<int64_t>& padding,
                                 const std::vector<int64_t>& output_padding,
                                 const std::vector<int64_t>& dilation);

// grad_x (in x's layout) and grad_w of conv_transpose2d_gemm from the output gradient g; each
// undefined unless asked for.
std::pair<at::Tensor, at::Tensor> conv_transpose2d_gemm_backward(
    const at::Tensor& g, const at::Tensor& x, const at::Tensor& weight,
    const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
    const std::vector<int64_t>& dilation, bool need_x, bool need_w);

// The same engine for a conv2d whose transposed conv qualifies (C_out >= 384 over at most 16
// output pixels: a discriminator's 256 -> 512 channel, 8x8 -> 4x4 layer): the forward is the
// transposed conv's input gradient (im2col of x + a GEMM, bias in it), the input gradient its
// forward, the weight gradient its weight gradient with the roles of x and grad_y swapped.
bool use_conv2d_gemm(const at::Tensor& x, const at::Tensor& weight, int64_t groups,
                     int64_t out_pixels);

// conv2d(x, weight, bias) (weight [C_out, C_in, kH, kW], one group), in at::convolution's layout.
at::Tensor conv2d_gemm(const at::Tensor& x, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias, const std::vector<int64_t>& stride,
                       const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation);

// grad_x (in x's layout) and grad_w of conv2d_gemm; each undefined unless asked for.
std::pair<at::Tensor, at::Tensor> conv2d_gemm_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
    const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
    const std::vector<int64_t>& dilation, bool need_x, bool need_w);

}  // namespace genkern::cpu
