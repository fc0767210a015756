// A direct conv for few input channels: a net's first layer, on an image's 1-3 channels (DCGAN's
// 3 -> 64 4x4 stride 2, the CIFAR CNN's 3 -> 32 3x3, the MNIST nets' 1 -> 32). There the GEMM's
// reduction C_in * kH * kW is only 9-48 long, and oneDNN runs such convs at 10-25% of the matmul
// peak: the work is the output's write, not the FMAs. These kernels (AVX-512, or AVX2 where the
// CPU has no AVX-512: stem_conv_avx2.h) read a zero-padded channels_last copy of x and write each
// output pixel's C_out channels once, bias and relu / leaky_relu applied in registers. Forward: a
// tile of pixels x 64 channels (16 on AVX2) summed over the taps (x padded whole, a few MB; an
// NCHW output goes a band of pixels at a time through a transpose in cache);
// weight gradient: a tile of taps x channels summed over chunks of about 512 pixels (whole
// samples or row bands, each padding its own rows), the chunks added into 16 fixed groups in
// order, the groups in order (the same bits for any thread count); an NCHW output gradient is
// transposed chunk by chunk.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>
#include <vector>

namespace genkern::cpu {

// GENKERN_CPU_STEM_CONV: 0 never, 1 auto (the measured rule, see use_stem_conv), 2 always
// (any one-group float32 call on an AVX2 CPU: how the tests run every shape through it).
void set_stem_conv_mode(int64_t mode);
int64_t stem_conv_mode();

// Whether the kernels can run conv2d(x, weight) with these groups (mode not never, AVX2,
// float32, one group), and whether it runs on them in training and in the regular path (mode
// always, or the auto rule). Batch-1 inference times them against the other paths for any
// number of channels (prepacked.h).
bool stem_conv_available(const at::Tensor& x, const at::Tensor& weight, int64_t groups);
bool use_stem_conv(const at::Tensor& x, const at::Tensor& weight, int64_t groups);

// weight [C_out, C_in, kH, kW] in the kernels' layout: per pass of 64 output channels a
// [C_in * kH * kW, 64] block, zero past C_out (what stem_conv2d packs when given none).
at::Tensor stem_pack_weight(const at::Tensor& weight);

// Whether conv2d(x, weight) has y's spatial size: the conv of a transposed conv's output
// gradient lands on its input only where output_padding < stride.
bool stem_conv_lands_on(const at::Tensor& x, const at::Tensor& y, const at::Tensor& weight,
                        const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
                        const std::vector<int64_t>& dilation);

// Whether stem_conv2d applies this activation itself (identity, relu, leaky_relu); others are
// applied after it.
bool stem_conv_fuses(int64_t activation);

// act(conv2d(x, weight, bias)) for act = identity (0), relu (1) or leaky_relu (2), in the memory
// format at::convolution gives the same arguments; packed: stem_pack_weight(weight), or none.
at::Tensor stem_conv2d(const at::Tensor& x, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias, const std::vector<int64_t>& stride,
                       const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation,
                       int64_t activation, double negative_slope,
                       const at::Tensor& packed = at::Tensor());

// The weight gradient (in ATen's layout for it) of act(conv2d(x, weight) + bias) from its
// output gradient grad_y, and the bias gradient when need_bias. saved: the tensor the
// activation's backward reads (see saves_output; none for identity). g = act'(.) * grad_y is
// made chunk by chunk in a buffer that stays in cache, never as a whole tensor.
std::tuple<at::Tensor, at::Tensor> stem_conv2d_param_grads(
    const at::Tensor& grad_y, const std::optional<at::Tensor>& saved, const at::Tensor& x,
    const at::Tensor& weight, const std::vector<int64_t>& stride,
    const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation,
    int64_t activation, double negative_slope, bool need_bias);

}  // namespace genkern::cpu
