// Products a @ b on oneDNN's matmul (torch's mkldnn::_linear_pointwise op) instead of ATen's mm
// (MKL). On AMD's AVX-512 CPUs MKL runs its AVX2 code and oneDNN its AVX-512 kernels: on a 2-core
// Zen 5 the dense layers' products ran 2.0-2.3x faster (128 x 3136 x 256: 212 -> 465 GFLOP/s,
// 128 x 784 x 400: 213 -> 454, 2048^3: 210 -> 478), in every orientation the linear backward
// takes (x W^T, g W, g^T x). Where MKL runs AVX-512 (Intel's) or neither has it, mm stays.
// Callers: linear_act.cpp (the dense layers) and conv_transpose2d_act.cpp (a transposed conv of a
// 1x1 input, one GEMM).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace genkern::cpu {

// GENKERN_CPU_ONEDNN_MATMUL: 0 never, 1 auto (float32 where ATen's GEMM is narrower than oneDNN's,
// !blas_as_wide_as_onednn()), 2 always (every float32 product: the tests on any CPU).
void set_onednn_matmul_mode(int64_t mode);
int64_t onednn_matmul_mode();

// Whether a @ b (2-D, strided) goes to oneDNN under the mode; false where torch lacks the op.
bool use_onednn_matmul(const at::Tensor& a, const at::Tensor& b);

// a @ b (+ bias, [b.size(1)], added to each row), a new contiguous [a.size(0), b.size(1)]
// tensor, on oneDNN's matmul.
at::Tensor onednn_matmul(const at::Tensor& a, const at::Tensor& b,
                         const std::optional<at::Tensor>& bias = std::nullopt);

// a @ b (+ bias) on oneDNN's matmul where use_onednn_matmul, else ATen's mm (addmm).
at::Tensor matmul_on_either(const at::Tensor& a, const at::Tensor& b,
                            const std::optional<at::Tensor>& bias = std::nullopt);

}  // namespace genkern::cpu
