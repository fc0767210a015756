// Copies of float32 tensors between NCHW and channels_last. ATen's strided copy moves 16 MB
// either way in 2.2-2.7 ms on this project's Xeons, against 0.6 ms for a plain clone; these
// transpose 16x16 tiles in AVX-512 registers, 8x8 ones in AVX2 registers (a blocked scalar loop
// without AVX2).
#pragma once

#include <ATen/core/Tensor.h>

namespace genkern::cpu {

// Whether an output of `bytes` is written with non-temporal stores: from 4 MB, twice this
// machine's L2 per core, it would not stay in cache for the next op, and a plain store reads each
// line before writing it (D1's NCHW forward, a 16.8 MB output: 1.55 -> 1.27 ms on a Zen 5).
constexpr int64_t kStreamOutputBytes = int64_t{4} << 20;
inline bool stream_output(int64_t bytes) { return bytes >= kStreamOutputBytes; }

// dst[c * ld_dst + r] = src[r * ld_src + c] for r < rows, c < cols: blocks of 64 x 64 in those
// register tiles, on the calling thread. For kernels that turn a band of pixels between NCHW and
// channels_last in cache (stem_conv_geometry.h). stream: dst's whole aligned lines written with
// non-temporal stores where the AVX-512 tiles run (fenced before returning).
void transpose_floats(const float* src, int64_t ld_src, float* dst, int64_t ld_dst, int64_t rows,
                      int64_t cols, bool stream = false);

// t.contiguous(ChannelsLast) (t itself where it already is), the copy of a contiguous float32
// 4-D t made here.
at::Tensor to_channels_last(const at::Tensor& t);

// The same as to_channels_last, the copy made in this thread's reusable buffer `slot` (0 or 1):
// a temporary that lives until this thread's next call for that slot. The buffers keep the
// largest size asked for; fresh memory for a copy of many MB costs more in page faults (~2 us per
// 4 KB page here) than the copy itself.
at::Tensor to_channels_last_scratch(const at::Tensor& t, int slot);

// t.contiguous() with at::empty's strides (t itself, or a view of it with those strides where a
// size-1 dim's stride differs), the copy of a channels_last float32 4-D t made here.
at::Tensor to_contiguous(const at::Tensor& t);

// t.contiguous(fmt), with the NCHW <-> channels_last copies of float32 4-D tensors made by the two
// above (t itself where it already is).
at::Tensor contiguous_as(const at::Tensor& t, at::MemoryFormat fmt);

}  // namespace genkern::cpu
