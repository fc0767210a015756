// 3x3 stride-1 padding-1 convs (a CIFAR CNN's layers) by Winograd's F(2x2, 3x3): a 2x2 output
// tile of a 3x3 correlation is AT [(G g G^T) * (BT d BT)] A over its 4x4 input window d, 16
// products per channel pair instead of 36. As GEMMs over the channels: 16 batched products
// [tiles, C_in] x [C_in, C_out], 0.44 of the direct conv's multiply-adds. The weights' transform
// U = G g G^T is made once (prepacked.h keeps it as the candidate's packed weight); each call
// transforms the input tiles into a buffer V, runs the 16 GEMMs as one batched product, and
// writes each output once through the output transform (with the bias). Points 0, 1, -1 and
// infinity: BT and AT hold only 0 and +-1, G halves, so the error is the direct conv's order.
// Deterministic: fixed chunking, one writer per output.
//
// It runs as an inference candidate of conv2d (eager_autograd.cpp): auto mode times it against
// the other paths on a geometry's first call and keeps it where it wins (the batch-1 CNN's 32 ->
// 64 and 64 -> 128 layers); GENKERN_CPU_WINOGRAD "always" keeps it untimed, "never" offers none.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

namespace genkern::cpu {

// Whether conv2d(x, weight) with these arguments can run here: float32 or float64, 3x3, stride
// 1, padding 1, dilation 1, one group, C_in matching, nothing empty.
bool winograd_3x3_available(const at::Tensor& x, const at::Tensor& weight,
                            const std::vector<int64_t>& stride,
                            const std::vector<int64_t>& padding,
                            const std::vector<int64_t>& dilation, int64_t groups);

// U [16, C_in, C_out] = G w G^T at each point, from a weight [C_out, C_in, 3, 3] of any layout;
// an empty tensor (winograd_3x3_conv2d then declines) where the weight's largest magnitude passes
// 64 times the mean magnitude of its other values: a transform's rounding scales with a
// filter's largest tap, and would swamp outputs that the direct conv computes from small ones.
at::Tensor winograd_3x3_pack_weight(const at::Tensor& weight);

// conv2d(x, weight, bias, stride 1, padding 1) from the weight's U, in memory format fmt; an
// undefined tensor where an input, bias or transformed value is not finite (a transform's
// inf - inf would turn an infinite output into NaN or spread a NaN over its tile), where the
// packed weight is empty, or where the bias does not fit: the caller then takes another path.
at::Tensor winograd_3x3_conv2d(const at::Tensor& x, const at::Tensor& packed,
                               const std::optional<at::Tensor>& bias, at::MemoryFormat fmt);

}  // namespace genkern::cpu
