// A transposed conv onto a few channels: a decoder's or generator's last layer (VAE and
// autoencoder 32 -> 1, DCGAN 64 -> 3, 4x4 stride 2) and the input gradient of a conv from 1-3
// channels (DCGAN's discriminator's first layer), the same computation. AVX-512 kernels (AVX2
// ones on CPUs without it): each input row's pixels times the weight as a [C_in, kH * kW * C_out]
// matrix (a register tile of pixels x up to 64 columns, 16 on AVX2), each pixel's kH x kW x C_out
// footprint added into an accumulator of one sample's output that stays in cache, then bias and
// the output's layout on the way out. ATen's GEMM + col2im kernel (slow_conv_transpose2d,
// col2im_path.h) writes a column buffer of C_out * kH * kW floats per input pixel to memory and
// reads it back.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

namespace genkern::cpu {

// GENKERN_CPU_HEAD_CONVT: 0 never (ATen's col2im kernel), 1 auto and 2 always (the kernels,
// wherever a call of the col2im path fits them).
void set_head_convt_mode(int64_t mode);
int64_t head_convt_mode();

// Whether the kernels take conv_transpose2d(x, weight) (weight [C_in, C_out, kH, kW]): mode not
// never, AVX2, float32, one group, no dilation, kW * C_out <= 16 and kH * kW * C_out <= 64.
bool use_head_convt(const at::Tensor& x, const at::Tensor& weight, int64_t groups,
                    const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
                    const std::vector<int64_t>& output_padding,
                    const std::vector<int64_t>& dilation);

// conv_transpose2d(x, weight, bias) (dilation 1, one group) in memory format fmt. Each output
// element sums its taps in a fixed order: the bits do not depend on the thread count.
at::Tensor head_conv_transpose2d(const at::Tensor& x, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias,
                                 const std::vector<int64_t>& stride,
                                 const std::vector<int64_t>& padding,
                                 const std::vector<int64_t>& output_padding, at::MemoryFormat fmt);

}  // namespace genkern::cpu
