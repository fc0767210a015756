// AVX-512 rows of the NCHW float32 ops whose windows are 2x2 tiles: max pool's backward (kernel =
// stride = 2, no padding) and x2 nearest upsampling, forward and backward. Each output row of
// windows owns two whole input rows, contiguous in memory (IW == 2 OW, IH == 2 OH), moved 16
// windows a vector: loads, selects and one interleave or deinterleave, where the general loops
// scatter or gather one element at a time (the autoencoder's 14- and 7-wide rows spent most of
// their time in that per-row, per-element overhead, not in memory).
#pragma once

#include <cstdint>

namespace genkern::cpu {

// Whether these kernels run here (avx512_kernels_enabled()).
bool pool_2x2_rows_enabled();

// Each takes `rows` consecutive rows, its pointers at the first: a row's last partial vector is
// loaded and stored whole, reading into the next rows and writing into the next rows' outputs,
// which they overwrite next (a masked store there took twice as long on a Zen 5); the last rows
// of the range, whose whole vectors would reach past it, are masked: a thread writes its own rows
// only.

// Max pool's input gradient under rows of OW pooled outputs (g, their gradients, and idx, the
// flat index within the plane of each maximum: torch's), the first row oh0 of planes of OH rows:
// the two input rows under each (2 OW each, contiguous at gx) get g at the tap idx holds and +0
// elsewhere; g + 0, as the scatter into zeros adds it.
void max_pool_2x2_backward_rows(const float* g, const int64_t* idx, float* gx, int64_t rows,
                                int64_t oh0, int64_t OH, int64_t OW);

// x2 nearest upsampling of input rows of IW: the two output rows of each (2 IW each, contiguous
// at y) are its row with each element twice.
void upsample_2x_rows(const float* x, float* y, int64_t rows, int64_t IW);

// Its gradient: gx[i] = ((a[2 i] + a[2 i + 1]) + b[2 i]) + b[2 i + 1], a and b a row's two
// output rows at gy (the general loop's order of adds).
void upsample_2x_backward_rows(const float* gy, float* gx, int64_t rows, int64_t IW);

}  // namespace genkern::cpu
