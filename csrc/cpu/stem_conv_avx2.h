// stem_conv.h's kernels for AVX2 + FMA CPUs without AVX-512 (8-lane ymm, 16 registers): a tile
// of 6 output pixels (forward) or 6 taps (weight gradient) x 16 channels in 12 accumulators,
// the channels of a pass walked 16 at a time. Same geometry, packed weight and sums as the
// AVX-512 kernels (stem_conv_geometry.h); each sum runs in the same fixed order, so the bits do
// not depend on the thread count.
#pragma once

#include <cstdint>

#include "genkern/activation.h"
#include "stem_conv_geometry.h"

namespace genkern::cpu::stem_detail {

// y = act(conv(xs, weight) + bias) for identity, relu or leaky_relu, channels_last or NCHW
// (nchw); xs the padded NHWC input, wpacked stem_pack_weight's layout, bias null or C_out.
void forward_avx2(const Stem& s, const float* xs, const float* wpacked, const float* bias,
                  Activation act, float slope, float* y, bool nchw);

// The forward's tile as a plain product, for other direct kernels (head_convt.cpp):
// out[r * ldo + j] = sum_k px[r][off[k]] * w[k * ldw + j] for r < rows and j < cols (a multiple
// of 16); px holds kGatherRows pointers (repeat the last past `rows`).
constexpr int kGatherRows = 6;
void gather_tile_avx2(const float* const* px, int rows, const int64_t* off, int64_t taps,
                      const float* w, int64_t ldw, int64_t cols, float* out, int64_t ldo);

// partial as weight_grad_chunks computes it, for any activation.
void weight_grad_avx2(const Stem& s, const Padded& pad, const float* gy, const float* saved,
                      bool nchw, Activation act, float slope, bool need_bias, float* partial);

}  // namespace genkern::cpu::stem_detail
