// Fused epilogues of GEMM-shaped ops on CUDA (conv2d, conv_transpose2d, linear): bias + activation
// after the main loop, and the activation's backward + bias gradient before it. The CUDA mirror of
// csrc/cpu/epilogue.cpp, with the same math (genkern/activation.h) and the same results up to
// rounding of the bias-gradient sums.
//
// Torch-free: raw pointers, 64-bit sizes and a cudaStream_t, so this header and
// epilogue_kernels.cu compile with plain nvcc (csrc/cuda/check_nvcc.sh) and this header with a
// plain C++ compiler (the torch glue in conv2d_act_cuda.cpp includes it).
//
// Tensors are dense [outer, channels, inner] views: inner == 1 is channels-last or [M, C] (channels
// innermost); inner > 1 is NCHW (outer = N, inner = H * W planes). T is float, double, __half or
// __nv_bfloat16; 16-bit types compute in float, double in double. Every function returns the
// launch's cudaError_t (cudaGetLastError) and never synchronizes, so all of it can be captured in a
// CUDA graph. Zero-size views return cudaSuccess without launching.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "genkern/activation.h"

namespace genkern::cuda {

// z <- act(z + bias) in place, one pass. When act_out is not null, z keeps z + bias (the
// pre-activation the backward needs, e.g. for silu) and act(z + bias) goes to act_out (same view,
// not aliasing z). bias is null or holds `channels` elements.
template <typename T>
cudaError_t bias_act_forward(T* z, T* act_out, const T* bias, int64_t outer, int64_t channels,
                             int64_t inner, Activation act, double negative_slope,
                             cudaStream_t stream);

// Bytes of workspace act_backward_bias_grad needs for this view (0 when none): the per-(chunk,
// channel) partial sums of the deterministic two-level bias-gradient reduction. Depends only on
// the shape and T, never on the device or on pointers.
template <typename T>
size_t act_backward_bias_grad_workspace_bytes(int64_t outer, int64_t channels, int64_t inner);

// grad = act_backward(grad_y, saved) in one pass and, when bias_grad is not null, bias_grad[c] =
// sum of grad over every (outer, inner) position of channel c, reduced in the same pass.
// - act == kIdentity: saved may be null and grad must be null (grad is grad_y itself); only the
//   reduction runs (nothing at all when bias_grad is null too).
// - Otherwise saved (the activation's output or input, see saves_output) and grad are required.
// The bias gradient sums the rounded grad values (what the main loop's backward sees), in fp32 for
// 16-bit and float T, in double for double T. Deterministic, no atomics: a first kernel writes one
// partial sum per (chunk, channel) into `workspace` (at least
// act_backward_bias_grad_workspace_bytes, aligned to 16 bytes; may be null when that is 0), a
// second sums the chunks of each channel in a fixed order. The chunking depends only on the shape.
template <typename T>
cudaError_t act_backward_bias_grad(const T* grad_y, const T* saved, T* grad, T* bias_grad,
                                   void* workspace, size_t workspace_bytes, int64_t outer,
                                   int64_t channels, int64_t inner, Activation act,
                                   double negative_slope, cudaStream_t stream);

}  // namespace genkern::cuda
