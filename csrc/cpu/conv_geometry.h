// Convolution geometry the CPU engines get wrong. torch 2.13's oneDNN crashes the process
// (SIGSEGV, 2 threads, on this project's AVX-512/AMX Xeons; stock F.conv2d / F.conv_transpose2d
// crash too) on calls where some output position gets no tap at all: its window lies wholly in
// the padding (conv), or no input pixel reaches it (transposed conv). Seen by the fuzz with
// bfloat16 / float16 convs and transposed convs, and with float32 convs on oneDNN's packed
// (weight-prepacked, bias post-op) path, e.g. a 1-column input, a 1x1 kernel, stride 2, dilation
// 2, padding 1.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

namespace genkern::cpu {

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

// An optional tensor (a bias) as float32, or nothing.
std::optional<at::Tensor> float32_copy(const std::optional<at::Tensor>& t);

}  // namespace genkern::cpu
