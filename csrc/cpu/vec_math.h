// Branch-free float32 math for CPU loops the compiler vectorizes (a libm call per element keeps a
// loop scalar; losses.cpp compiles those loops for AVX2+FMA and for the baseline, see
// GK_CPU_CLONES), and the counter-based Philox4x32-10 generator. CPU only, torch-free. exp and
// log1p are genkern/losses.h's float specializations (the loss math shared with CUDA); these add
// the log of (0, 1] and sin/cos of a fraction of a turn that Box-Muller needs.
#pragma once

#include <cstdint>

#include "genkern/losses.h"

namespace genkern::cpu::vmath {

static inline float from_bits(int32_t b) {
  float f;
  __builtin_memcpy(&f, &b, sizeof f);
  return f;
}

static inline int32_t to_bits(float f) {
  int32_t b;
  __builtin_memcpy(&b, &f, sizeof b);
  return b;
}

// log(u) for u in (0, 1] (normal floats): u = 2^k (1 + f) with 1 + f in [sqrt(1/2), sqrt(2)).
static inline float log_unit(float u) {
  const int32_t b = to_bits(u);
  const float m = from_bits((b & 0x007fffff) | 0x3f800000);  // in [1, 2)
  const bool big = m > 1.41421356237f;
  const float k = static_cast<float>((b >> 23) - 127) + (big ? 1.0f : 0.0f);
  return detail::log_reduced(k, big ? 0.5f * m - 1.0f : m - 1.0f);
}

// sin and cos of 2 pi t for t in [0, 1] (Cephes sinf/cosf on [-pi/4, pi/4] after taking out
// the quarter turn q = round(4 t), exactly).
static inline void sincos_turns(float t, float* s, float* c) {
  const float q = (4.0f * t + 12582912.0f) - 12582912.0f;
  const float a = (t - 0.25f * q) * 6.28318530717958648f;  // in [-pi/4, pi/4]
  const float z = a * a;
  float ps = -1.9515295891e-4f;
  ps = ps * z + 8.3321608736e-3f;
  ps = ps * z - 1.6666654611e-1f;
  const float sa = ps * z * a + a;
  float pc = 2.443315711809948e-5f;
  pc = pc * z - 1.388731625493765e-3f;
  pc = pc * z + 4.166664568298827e-2f;
  const float ca = pc * z * z - 0.5f * z + 1.0f;
  const int32_t qi = static_cast<int32_t>(q) & 3;
  const float s1 = (qi & 1) ? ca : sa;  // quarter turns: (s, c) -> (c, -s) -> (-s, -c) -> (-c, s)
  const float c1 = (qi & 1) ? sa : ca;
  *s = (qi & 2) ? -s1 : s1;
  *c = ((qi + 1) & 2) ? -c1 : c1;
}

// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011): four
// 32-bit words from a 128-bit counter and a 64-bit key (checked against Random123's known-answer
// vectors). Plain integer code: a loop over independent counters vectorizes (32x32->64-bit
// products).
static inline void philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                 uint32_t k1, uint32_t out[4]) {
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = uint64_t{0xD2511F53u} * c0;
    const uint64_t p1 = uint64_t{0xCD9E8D57u} * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

// Uniforms of Box-Muller from 32 random bits (24 of them: float's mantissa): (0, 1] and [0, 1).
static inline float uniform_open0(uint32_t w) {
  return static_cast<float>(static_cast<int32_t>(w >> 8) + 1) * 5.9604644775390625e-8f;
}
static inline float uniform_open1(uint32_t w) {
  return static_cast<float>(static_cast<int32_t>(w >> 8)) * 5.9604644775390625e-8f;
}

}  // namespace genkern::cpu::vmath
