// exp for the per-element math shared by host and device code (activation.h, losses.h):
// exp_neg(a) = exp(-a) for a >= 0 (or NaN) and exp_full(x) = exp(x). On the device and for
// double they are the math library's; for float on the host, branch-free Cephes-style range
// reductions and polynomials (about 1-2 ulp) that the compiler vectorizes, where a libm call per
// element would not. The polynomials are evaluated in Estrin's scheme (pairs, then powers of the
// argument), not Horner's: a vectorized loop over them is bound by the latency of its dependency
// chain, which that shortens.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define GK_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define GK_HOST_DEVICE inline
#endif

namespace genkern {

using std::exp;  // float overloads for float math, on host and device
using std::tanh;

template <typename T>
GK_HOST_DEVICE T exp_neg(T a) {
  return exp(-a);
}
template <typename T>
GK_HOST_DEVICE T exp_full(T x) {
  return exp(x);
}
template <typename T>
GK_HOST_DEVICE T tanh_full(T x) {
  return tanh(x);
}

#if !defined(__CUDA_ARCH__)
namespace detail {

// exp(r) for x = n ln 2 + r: n = round(x / ln 2) (in *n), |r| <= ln(2) / 2 (Cephes expf).
inline float exp_mantissa(float x, int32_t* n) {
  const float t = x * 1.44269504088896341f;
  const float nf = (t - 12582912.0f) + 12582912.0f;  // round to nearest, |t| < 2^22
  float r = x - nf * 0.693359375f;
  r = r - nf * -2.12194440e-4f;
  const float z = r * r;
  const float q01 = 5.0000001201e-1f + 1.6666665459e-1f * r;
  const float q23 = 4.1665795894e-2f + 8.3334519073e-3f * r;
  const float q45 = 1.3981999507e-3f + 1.9875691500e-4f * r;
  const float p = (q01 + q23 * z) + q45 * (z * z);
  *n = static_cast<int32_t>(nf);
  return p * z + r + 1.0f;
}

// 2^b as a float for b in [-127, 127]: the exponent field alone (2^-127 reads as +0).
inline float pow2_bits(int32_t b) {
  const uint32_t bits = static_cast<uint32_t>(b + 127) << 23;
  float f;
  __builtin_memcpy(&f, &bits, sizeof f);
  return f;
}

// exp(x) for x in [-104, 89]: 2^n applied as two scales 2^(n / 2) and 2^(n - n / 2), each a
// normal float for n in [-150, 129].
inline float exp_reduced(float x) {
  int32_t n;
  const float y = exp_mantissa(x, &n);
  const int32_t h = n >> 1;
  return y * pow2_bits(h) * pow2_bits(n - h);
}

}  // namespace detail

// 0 for a above 87 (below float's normal range, as the limit at +inf): there the argument is
// -88, whose n = -127 scales by 2^-127 read as +0. One scale, exact for a <= 87 (n >= -126), and no
// subnormal intermediate (a microcode assist on x86 cores, 50% slower loops on Zen 1).
template <>
inline float exp_neg<float>(float a) {
  int32_t n;
  const float y = detail::exp_mantissa(-(a > 87.0f ? 88.0f : a), &n);  // NaN stays NaN
  return y * detail::pow2_bits(n);
}
// inf above 88.72, gradual underflow to 0 below -87.3, NaN -> NaN.
template <>
inline float exp_full<float>(float x) {
  return detail::exp_reduced(x > 89.0f ? 89.0f : (x < -104.0f ? -104.0f : x));  // NaN stays
}

// tanh(x): odd, +-1 at +-inf, NaN -> NaN, -0 -> -0. |x| < 0.625: x + x^3 P(x^2) (Cephes tanhf's
// polynomial); else 1 - 2 e / (1 + e) with e = exp(-2|x|) <= 0.29: the subtrahend, <= 0.45, is
// good to its own few ulp, and 1 - it rounds once (against float64 on a dense sweep: 1.4 ulp at
// most, next to the switch, 0.6 from |x| = 2 on, where (1 - e) / (1 + e), rounded three times,
// gave 1.5 ulp and the gradient 1 - y^2 several times stock's error: found by the fuzz). ATen's
// CPU tanh ran 786K floats in 0.76 ms on a Zen 5 (2 threads), its sigmoid in 0.09 ms: this one
// vectorizes like the sigmoid.
template <>
inline float tanh_full<float>(float x) {
  const float a = std::fabs(x), z = x * x;
  const float e = exp_neg(2.0f * a);
  const float big = 1.0f - 2.0f * e / (1.0f + e);
  const float z2 = z * z;
  const float p = ((-5.70498872745e-3f * z + 2.06390887954e-2f) * z2 +
                   (-5.37397155531e-2f * z + 1.33314422036e-1f)) * z - 3.33332819422e-1f;
  const float small = a + a * z * p;
  return std::copysign(a < 0.625f ? small : big, x);
}
#endif

}  // namespace genkern
