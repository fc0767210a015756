// A dot-product GEMM for float32: C[M, N] = act(A[M, K] B[K, N] + bias) where the rows of A and
// the columns of B are contiguous over k (a linear layer's forward, x @ W^T, with x and W as they
// lie). Each element of C is the dot product of two contiguous rows, in register blocks (AVX-512:
// 4x4 elements in 16 zmm accumulators, 8 loads feed 16 FMAs; AVX2: 2x4 in 8 ymm), no broadcasts,
// nothing packed, then one shuffle tree folds the accumulators' lanes. It beats the broadcast
// tile of small_gemm.cpp (which must first transpose W into panels) and MKL on a long k with few
// outputs (use_dot_gemm). Torch-free but for at::parallel_for.
#pragma once

#include <cstdint>

#include "small_gemm.h"

namespace genkern::cpu {

// GENKERN_CPU_DOT_GEMM: 0 never, 1 auto (the measured rule), 2 always (every product it can take
// on an AVX2 CPU: how the tests run their grids through it).
void set_dot_gemm_mode(int64_t mode);
int64_t dot_gemm_mode();

// Whether an [M, K] x [K, N] product with k-contiguous operands goes through dot_gemm_f32: the
// mode, the CPU, and in auto mode the measured rule.
bool use_dot_gemm(int64_t M, int64_t N, int64_t K);

// Computes g.C (and g.Z, the pre-activation, when given); needs g.a_cs == 1, g.b_rs == 1 and
// avx2_kernels_enabled(). Each element is summed by one thread in a fixed order: the bits do not
// depend on the thread count.
void dot_gemm_f32(const GemmArgs& g);

}  // namespace genkern::cpu
