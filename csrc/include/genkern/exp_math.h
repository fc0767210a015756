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

template <typename T>
GK_HOST_DEVICE T exp_neg(T a) {
  return exp(-a);
}
template <typename T>
GK_HOST_DEVICE T exp_full(T x) {
  return exp(x);
}

#if !defined(__CUDA_ARCH__)
namespace detail {

// 2^n exp(r) for x in [-104, 89]: n = round(x / ln 2), |r| <= ln(2) / 2 (Cephes expf); 2^n is
// applied as two scales 2^(n / 2) and 2^(n - n / 2), each a normal float for n in [-150, 129].
inline float exp_reduced(float x) {
  const float t = x * 1.44269504088896341f;
  const float n = (t - 12582912.0f) + 12582912.0f;  // round to nearest, |t| < 2^22
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  const float z = r * r;
  const float q01 = 5.0000001201e-1f + 1.6666665459e-1f * r;
  const float q23 = 4.1665795894e-2f + 8.3334519073e-3f * r;
  const float q45 = 1.3981999507e-3f + 1.9875691500e-4f * r;
  const float p = (q01 + q23 * z) + q45 * (z * z);
  const float y = p * z + r + 1.0f;
  const int32_t ni = static_cast<int32_t>(n);
  const int32_t h = ni >> 1;
  const int32_t b1 = (h + 127) << 23, b2 = (ni - h + 127) << 23;
  float s1, s2;
  __builtin_memcpy(&s1, &b1, sizeof s1);
  __builtin_memcpy(&s2, &b2, sizeof s2);
  return y * s1 * s2;
}

}  // namespace detail

template <>
inline float exp_neg<float>(float a) {
  const float y = detail::exp_reduced(-(a > 88.0f ? 88.0f : a));  // NaN stays NaN
  return a > 87.0f ? 0.0f : y;  // below float's normal range: 0 (as the limit at +inf)
}
// inf above 88.72, gradual underflow to 0 below -87.3, NaN -> NaN.
template <>
inline float exp_full<float>(float x) {
  return detail::exp_reduced(x > 89.0f ? 89.0f : (x < -104.0f ? -104.0f : x));  // NaN stays
}
#endif

}  // namespace genkern
