// 4x4 stride-2 padding-1 convolutions (a DCGAN's middle layers, in both directions) by Winograd's
// F(4, 2) over their polyphase components. Along each spatial dim such a conv is two 2-tap
// correlations: conv2d sums one over the even and one over the odd input samples,
//   y[o] = x[2o] w1 + x[2o + 2] w3 + x[2o - 1] w0 + x[2o + 1] w2,
// and conv_transpose2d writes one to the even and one to the odd outputs,
//   y[2j] = x[j - 1] w3 + x[j] w1,  y[2j + 1] = x[j] w2 + x[j + 1] w0.
// F(4, 2) computes 4 outputs of a 2-tap correlation from 5 inputs with 5 products instead of 8,
// so a 4x4 tile of each 2-D phase costs 25 products instead of 64: as GEMMs over the channels,
// 25 x 4 products [tiles, C_in] x [C_in, C_out] per 16 outputs, 0.39 of the direct conv's FLOPs.
// Input tiles are transformed into a buffer (V), the weights once per call (U), the GEMMs run as
// one batched product, and the output transform (with the bias) writes each output once.
// The input gradient of either conv is the other's forward with the same weight tensor, so both
// directions and both passes share the two engines; the weight gradient transforms x and grad_y's
// tiles and runs the GEMMs over the tiles. Deterministic: fixed chunking, one writer per
// output. Error: ~1e-6 of the largest output in float32 (points 0, 1, -1, 2, infinity).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

namespace genkern::cpu {

// GENKERN_CPU_WINOGRAD: 0 never, 1 auto (the measured rule, see use_winograd_s2), 2 always (any
// float32/float64 call of this geometry: how the tests run their grids through it).
void set_winograd_mode(int64_t mode);
int64_t winograd_mode();

// Whether conv2d(x, weight) (transposed: conv_transpose2d, weight [C_in, C_out, 4, 4]) with these
// arguments, and its backward's input and weight gradients, run here.
bool use_winograd_s2(const at::Tensor& x, const at::Tensor& weight,
                     const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
                     const std::vector<int64_t>& dilation, int64_t groups, bool transposed);

// All three return an undefined tensor where an input, weight or bias value, or a transformed
// one, is not finite: a transform's inf - inf would turn an output that should be infinite into
// NaN, or spread a NaN to the other outputs of its tile. The two forwards also decline a weight
// with a tap over 64x the mean magnitude of the others (winograd::within_range: its transform's
// rounding would swamp the small taps' outputs; the weight gradient, which transforms x and
// grad_y, has no such check). The caller then takes the direct path.

// conv2d(x, weight, bias, stride 2, padding 1) (weight [C_out, C_in, 4, 4]) with an output of
// oh x ow pixels, in memory format fmt. oh, ow: the conv's output size, or for an input gradient
// of conv_transpose2d (same weight tensor) that input's size.
at::Tensor winograd_s2_conv2d(const at::Tensor& x, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, int64_t oh, int64_t ow,
                              at::MemoryFormat fmt);

// conv_transpose2d(x, weight, bias, stride 2, padding 1) (weight [C_in, C_out, 4, 4]) with an
// output of oh x ow pixels (2 H + output_padding, or for the input gradient of conv2d with the
// same weight tensor that input's size), in memory format fmt.
at::Tensor winograd_s2_conv_transpose2d(const at::Tensor& x, const at::Tensor& weight,
                                        const std::optional<at::Tensor>& bias, int64_t oh,
                                        int64_t ow, at::MemoryFormat fmt);

// The weight gradient [C_out, C_in, 4, 4] of conv2d(x, w, stride 2, padding 1) from its output
// gradient grad_y, in memory format fmt: 25 batched products [4 C_in, tiles] x [tiles, C_out] of
// x's transformed tiles and grad_y's tiles taken back through the output transform. A transposed
// conv's is that of conv2d(its output gradient) with its input as grad_y.
at::Tensor winograd_s2_conv2d_weight_grad(const at::Tensor& x, const at::Tensor& grad_y,
                                          at::MemoryFormat fmt);

}  // namespace genkern::cpu
