// The weight gradient of a conv over channels_last tensors on AVX2 + FMA kernels of genkern's own.
// oneDNN's AVX2 weight gradient runs at 51-58 GFLOP/s on this project's 2-core AMD Zen 1 where its
// forward and input gradient run at 65-83 (the DCGAN discriminator's 128 -> 256 4x4 stride-2
// layer: 84 ms against 55 forward), and the weight gradient is a third of a training step's
// convolution FLOPs. As a GEMM, dW[k, tap, c] = sum over output pixels p of g[p, k] x[p @ tap, c]:
// a tile of 6 output channels x 16 input channels in twelve ymm accumulators, one broadcast of g
// and two loads of x per pixel, summed over a block of about kBlockPixels output pixels whose
// (g, x) offsets for each tap are listed once (padding and stride drop out of the inner loop);
// each block's sum is added into dW in block order, so the bits do not depend on the thread count
// (threads own disjoint tiles). Measured on the Zen 1 (2 threads, through autograd): 61-69
// GFLOP/s on the DCGAN and CIFAR CNN layers, 1.1-1.3x oneDNN's. On AVX-512 CPUs a 12 x 32 tile
// (24 zmm accumulators, input channels a multiple of 32) sums each element by the same FMA chain
// (the same bits): on a 2-core Zen 5 the DCGAN layers ran at 393-549 GFLOP/s where oneDNN's
// AVX-512 weight gradient ran at 301-357 (1.1-1.8x).
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace genkern::cpu {

// GENKERN_CPU_CONV_WGRAD: 0 never, 1 auto (float32, one group, channels innermost in the input
// and the gradient, input channels a multiple of 16; on AVX-512 CPUs only AMD's, the measured
// ones, and 64 or more input channels a multiple of 32), 2 always (every call the kernels take,
// on any AVX2 CPU: the tests).
void set_conv_wgrad_mode(int64_t mode);
int64_t conv_wgrad_mode();

// Whether the weight gradient of conv2d(input, w) (groups as given) from grad runs on these
// kernels. A transposed conv's weight gradient is that of conv2d(its output gradient, w) with its
// input as the gradient: pass them in those roles.
bool use_conv_wgrad(const at::Tensor& input, const at::Tensor& grad, int64_t groups);

// dW [K, C, kH, kW] (channels_last strides) of conv2d(input [N, C, H, W], w) from its output
// gradient grad [N, K, OH, OW], for a weight of kernel size (kH, kW) and this geometry; refuses
// tensors the kernels cannot take and a grad whose size is not the conv's output size.
at::Tensor conv2d_weight_grad_avx2(const at::Tensor& input, const at::Tensor& grad, int64_t kh,
                                   int64_t kw, const std::vector<int64_t>& stride,
                                   const std::vector<int64_t>& padding,
                                   const std::vector<int64_t>& dilation);

}  // namespace genkern::cpu
