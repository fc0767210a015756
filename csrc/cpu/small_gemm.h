// A small-GEMM kernel for float32: C[M, N] = act(A[M, K] B[K, N] + bias), the epilogue applied to
// each register tile before it is stored. For the dense layers of the reference nets (batch 128,
// a few hundred features), where MKL's sgemm spends more on setup and threading than on the FMAs.
// Torch-free but for at::parallel_for: raw pointers and element strides.
#pragma once

#include <cstdint>
#include <type_traits>

#include "dispatch_bool.h"
#include "genkern/activation.h"

namespace genkern::cpu {

struct GemmArgs {
  int64_t M = 0, N = 0, K = 0;
  const float* A = nullptr;  // A[m, k] = A[m * a_rs + k * a_cs]: any strides (transposed views)
  int64_t a_rs = 0, a_cs = 0;
  const float* B = nullptr;  // B[k, n] = B[k * b_rs + n * b_cs]: packed into column panels
  int64_t b_rs = 0, b_cs = 0;
  const float* bias = nullptr;  // per column of C, or null
  int64_t bias_stride = 1;
  float* C = nullptr;  // row-major, rows ldc apart
  int64_t ldc = 0;
  float* Z = nullptr;  // when given (rows ldc apart too): the pre-activation A B + bias
  Activation act = Activation::kIdentity;
  float slope = 0.f;
};

// f(ActivationTag<g.act>, std::bool_constant<g.bias != nullptr>): the kernels' epilogues are
// specialized on both.
template <typename F>
void dispatch_epilogue(const GemmArgs& g, F&& f) {
  dispatch_activation(g.act, [&](auto act) {
    dispatch_bool(g.bias != nullptr, [&](auto has_bias) { f(act, has_bias); });
  });
}

// The register-blocked kernels' epilogue: C[r, j] = act(acc[r * acc_ld + j] + bias[j]) over a
// block's rows and cols (rows of C and Z ldc apart), and Z = the pre-activation sum when given.
template <Activation A, bool HasBias>
inline void store_block(const float* acc, int64_t acc_ld, int rows, int cols, const float* bias,
                        float slope, float* c, float* z, int64_t ldc) {
  for (int r = 0; r < rows; ++r) {
    const float* t = acc + r * acc_ld;
    float* cr = c + r * ldc;
    if (z != nullptr) {
      float* zr = z + r * ldc;
      for (int j = 0; j < cols; ++j) {
        const float v = HasBias ? t[j] + bias[j] : t[j];
        zr[j] = v;
        cr[j] = act_forward<A, float>(v, slope);
      }
    } else {
      for (int j = 0; j < cols; ++j)
        cr[j] = act_forward<A, float>(HasBias ? t[j] + bias[j] : t[j], slope);
    }
  }
}

// Computes g.C (and g.Z). Each element of C is summed by one thread over k in order, so the bits
// do not depend on the thread count. A 12x16 AVX-512 tile where the CPU has AVX-512, a 6x16
// AVX2+FMA one where it has AVX2 (the same bits: the same FMA chain per element), else portable
// code (GENKERN_CPU_NO_AVX512=1 forces the AVX2 tile, GENKERN_CPU_NO_AVX2=1 the portable code).
void small_gemm_f32(const GemmArgs& g);

// Whether small_gemm_f32 is expected to beat ATen's mm (MKL) on an [M, K] x [K, N] product.
bool small_gemm_wins(int64_t M, int64_t N, int64_t K);

// Whether this CPU has AVX-512.
bool cpu_has_avx512();

// Whether this CPU is Intel's (x86-64; false elsewhere).
bool cpu_is_intel();

// Whether ATen's float32 GEMM (MKL in torch's x86 builds) runs its AVX-512 kernels: an AVX-512 CPU
// of Intel's (there MKL's wider kernels win most products, see linear_act.cpp). On other vendors'
// CPUs MKL takes its AVX2 code, AVX-512 ones included: on a 2-core Zen 5, torch.mm ran 2048^3 at
// 191 GFLOP/s and oneDNN's 1x1 conv (AVX-512) the same product at 412.
bool blas_runs_avx512();

// Whether ATen's GEMM runs vectors as wide as oneDNN's convs: no AVX-512, or blas_runs_avx512().
// Paths that trade a conv (oneDNN's) for GEMMs (ATen's) pay only where it holds.
bool blas_as_wide_as_onednn();

// Whether genkern's AVX2 kernels run: AVX2 and FMA, GENKERN_CPU_NO_AVX2 unset.
bool avx2_kernels_enabled();

// Whether genkern's AVX-512 kernels run: cpu_has_avx512(), AVX-512VL, GENKERN_CPU_NO_AVX512 unset.
bool avx512_kernels_enabled();

}  // namespace genkern::cpu
