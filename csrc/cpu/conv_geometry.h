// Convolution geometry shared by the CPU conv paths: ATen's output layout rule, and the geometry
// the engines get wrong. torch 2.13's oneDNN crashes the process
// (SIGSEGV, 2 threads, on this project's AVX-512/AMX Xeons; stock F.conv2d / F.conv_transpose2d
// crash too) on calls where some output position gets no tap at all: its window lies wholly in
// the padding (conv), or no input pixel reaches it (transposed conv). Seen by the fuzz with
// bfloat16 / float16 convs and transposed convs, and with float32 convs on oneDNN's packed
// (weight-prepacked, bias post-op) path, e.g. a 1-column input, a 1x1 kernel, stride 2, dilation
// 2, padding 1.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <utility>
#include <vector>

namespace genkern::cpu {

// Output size along one spatial dim of a conv (0 when the dilated kernel does not fit) and of a
// transposed conv: torch's formulas.
int64_t conv_output_size(int64_t in, int64_t kernel, int64_t stride, int64_t padding,
                         int64_t dilation);
int64_t transposed_output_size(int64_t in, int64_t kernel, int64_t stride, int64_t padding,
                               int64_t output_padding, int64_t dilation);

// The output_padding of the transposed conv of a conv's output gradient g [N, C_out, ..] that
// lands exactly on x's size (its input gradient); it may fall outside [0, max(stride, dilation)),
// where no transposed conv gives that size.
std::vector<int64_t> input_grad_output_padding(const at::Tensor& g, const at::Tensor& x,
                                               const at::Tensor& weight,
                                               const std::vector<int64_t>& stride,
                                               const std::vector<int64_t>& padding,
                                               const std::vector<int64_t>& dilation);

// Whether some output position along a spatial dim gets no tap.
bool has_empty_output(bool transposed, const at::Tensor& x, const at::Tensor& weight,
                      const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
                      const std::vector<int64_t>& output_padding,
                      const std::vector<int64_t>& dilation);

// 16-bit calls with such an output run in float32 instead (the same float32 accumulation, one
// rounding to the 16-bit dtype), never reaching the kernels that crash.
bool run_16bit_in_float32(bool transposed, const at::Tensor& x, const at::Tensor& weight,
                          const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
                          const std::vector<int64_t>& output_padding,
                          const std::vector<int64_t>& dilation);

// at::convolution / at::convolution_backward (only the input and weight gradients, as
// output_mask asks) on float32 copies, the results cast back to the inputs' dtypes.
at::Tensor convolution_in_float32(const at::Tensor& x, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias,
                                  const std::vector<int64_t>& stride,
                                  const std::vector<int64_t>& padding,
                                  const std::vector<int64_t>& dilation, bool transposed,
                                  const std::vector<int64_t>& output_padding, int64_t groups);
std::pair<at::Tensor, at::Tensor> convolution_backward_in_float32(
    const at::Tensor& g, const at::Tensor& x, const at::Tensor& weight,
    const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
    const std::vector<int64_t>& dilation, bool transposed,
    const std::vector<int64_t>& output_padding, int64_t groups, bool need_x, bool need_w);

// ATen's output layout for a convolution of x with w: channels_last when either is.
at::MemoryFormat conv_output_format(const at::Tensor& x, const at::Tensor& w);

}  // namespace genkern::cpu
