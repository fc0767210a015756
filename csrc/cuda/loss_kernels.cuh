// Fused GAN and VAE losses on CUDA: loss and gradients in one pass. The CUDA mirror of
// csrc/cpu/losses.cpp with the same per-element math (genkern/losses.h).
//
// Torch-free: raw pointers, 64-bit sizes and a cudaStream_t (compiles with plain nvcc, see
// csrc/cuda/check_nvcc.sh). T is float, double, __half or __nv_bfloat16; sums and math are in
// float for 16-bit types and float (LossAcc<T>), double for double.
//
// Deterministic two-level reduction, no atomics: the first level gives each block a fixed chunk of
// kLossChunk elements (256 threads x 8, coalesced) and writes the block's sum (a fixed-order tree)
// to partials[block]; loss_finish sums the partials of up to two inputs in a fixed order in one
// block. The chunking depends only on n. Gradients go to fresh buffers (never the inputs); a null
// gradient pointer skips it. Every function returns cudaGetLastError() and never synchronizes.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "genkern/losses.h"

namespace genkern::cuda {

template <typename T>
struct LossAcc {
  using type = float;
};
template <>
struct LossAcc<double> {
  using type = double;
};

constexpr int64_t kLossChunk = 2048;

// Partial sums (first-level blocks) for n elements: the size of the partials buffer.
inline int64_t loss_num_partials(int64_t n) { return (n + kLossChunk - 1) / kLossChunk; }

// partials[b] = sum of term(x) over chunk b; grad (if not null) = gscale * term'(x).
template <typename T>
cudaError_t gan_term_partials(const T* x, T* grad, typename LossAcc<T>::type* partials, int64_t n,
                              LossTerm term, double gscale, cudaStream_t stream);

// partials[b] = sum of recon_term(x, t) over chunk b; gx, gt (if not null) = scale * derivatives.
template <typename T>
cudaError_t recon_partials(const T* x, const T* t, T* gx, T* gt,
                           typename LossAcc<T>::type* partials, int64_t n, ReconLoss recon,
                           double scale, cudaStream_t stream);

// partials[b] = sum of kl_term(mu, lv) over chunk b; gmu, glv (if not null) = scale * derivatives.
template <typename T>
cudaError_t kl_partials(const T* mu, const T* lv, T* gmu, T* glv,
                        typename LossAcc<T>::type* partials, int64_t n, double scale,
                        cudaStream_t stream);

// A = sa * sum(pa[0..na)), B = sb * sum(pb[0..nb)) (pb may be null when nb == 0), in a fixed
// order; out[0] = A + wb * B, out[1] = A, out[2] = B.
template <typename A>
cudaError_t loss_finish(const A* pa, int64_t na, double sa, const A* pb, int64_t nb, double sb,
                        double wb, A* out, cudaStream_t stream);

// z = mu + eps * exp(0.5 * lv), std = exp(0.5 * lv).
template <typename T>
cudaError_t reparameterize(const T* mu, const T* lv, const T* eps, T* z, T* std, int64_t n,
                           cudaStream_t stream);

}  // namespace genkern::cuda
