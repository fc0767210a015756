// batch_norm + activation and pooling / nearest upsampling on CUDA: torch-free kernels (raw
// pointers, 64-bit sizes, a cudaStream_t), the mirror of csrc/cpu/batch_norm_act.cpp and
// csrc/cpu/pool.cpp with the same semantics. Compiles with plain nvcc (check_nvcc.sh).
//
// T is float, double, __half or __nv_bfloat16; 16-bit types compute in float. Every function
// returns the launch's cudaError_t and never synchronizes. Deterministic: reductions are one block
// per channel with a fixed per-thread assignment and a fixed tree; backward passes of the pools
// gather (each input sums the outputs that reach it), no atomics.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "genkern/activation.h"

namespace genkern::cuda {

// x as [outer, channels, inner] (inner == 1: channels-last rows). Batch mean and biased variance
// per channel into mean / var (AccT = float, or double for T = double).
template <typename T, typename AccT>
cudaError_t bn_stats(const T* x, AccT* mean, AccT* var, int64_t outer, int64_t channels,
                     int64_t inner, cudaStream_t stream);

// y = act(x * scale[c] + shift[c]); pre (may be null) gets the pre-activation.
template <typename T, typename AccT>
cudaError_t bn_apply(const T* x, T* y, T* pre, const AccT* scale, const AccT* shift, int64_t outer,
                     int64_t channels, int64_t inner, Activation act, double negative_slope,
                     cudaStream_t stream);

// sum_g[c] = sum g, sum_gx[c] = sum g * (x - mean[c]), g = act_backward(grad_y, saved).
template <typename T, typename AccT>
cudaError_t bn_backward_reduce(const T* grad_y, const T* saved, const T* x, const AccT* mean,
                               AccT* sum_g, AccT* sum_gx, int64_t outer, int64_t channels,
                               int64_t inner, Activation act, double negative_slope,
                               cudaStream_t stream);

// grad_x = ka[c] * g + kb[c] * x + kc[c].
template <typename T, typename AccT>
cudaError_t bn_backward_apply(const T* grad_y, const T* saved, const T* x, T* grad_x,
                              const AccT* ka, const AccT* kb, const AccT* kc, int64_t outer,
                              int64_t channels, int64_t inner, Activation act,
                              double negative_slope, cudaStream_t stream);

// Logical [N, C, H, W] tensors addressed through strides (NCHW and channels_last alike).
struct Geometry {
  int64_t n, c, ih, iw, oh, ow;
  int64_t xs[4], ys[4];  // strides of the input and of the output (n, c, h, w)
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
};

template <typename T>
cudaError_t max_pool2d_forward(const T* x, T* y, int64_t* indices, const Geometry& g,
                               cudaStream_t stream);
// grad_y and indices share the output strides g.ys; grad_x has g.xs.
template <typename T>
cudaError_t max_pool2d_backward(const T* grad_y, const int64_t* indices, T* grad_x,
                                const Geometry& g, cudaStream_t stream);
// divisor_override <= 0: none.
template <typename T>
cudaError_t avg_pool2d_forward(const T* x, T* y, const Geometry& g, bool count_include_pad,
                               int64_t divisor_override, cudaStream_t stream);
template <typename T>
cudaError_t avg_pool2d_backward(const T* grad_y, T* grad_x, const Geometry& g,
                                bool count_include_pad, int64_t divisor_override,
                                cudaStream_t stream);
// y[n, c, i, j] = x[n, c, src_h[i], src_w[j]].
template <typename T>
cudaError_t upsample_nearest2d_forward(const T* x, T* y, const int64_t* src_h,
                                       const int64_t* src_w, const Geometry& g,
                                       cudaStream_t stream);
// grad_x[n, c, i, j] = sum of grad_y over rows [h_lo[i], h_hi[i]) x columns [w_lo[j], w_hi[j]).
template <typename T>
cudaError_t upsample_nearest2d_backward(const T* grad_y, T* grad_x, const int64_t* h_lo,
                                        const int64_t* h_hi, const int64_t* w_lo,
                                        const int64_t* w_hi, const Geometry& g,
                                        cudaStream_t stream);

}  // namespace genkern::cuda
