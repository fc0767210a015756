// A zmm's first n lanes as a mask, and loads and stores of a vector whole or of its first n lanes
// (Masked: a masked store took twice as long on a Zen 5, even with every lane set; whole ones are
// for where reading and writing past n is safe). Shared by the AVX-512 pool kernels
// (pool_2x2_rows.cpp, pool_2x2_groups.cpp); GCC on x86-64 only.
#pragma once

#include <immintrin.h>

#include <cstdint>

#pragma GCC push_options
#pragma GCC target("avx512f")
namespace genkern::cpu::avx512 {

// The first n lanes (none for n <= 0, all from 16).
inline __mmask16 first(int64_t n) {
  if (n <= 0) return 0;
  return n >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << n) - 1);
}

template <bool Masked>
inline __m512 load(const float* p, int64_t n) {
  if constexpr (Masked) return _mm512_maskz_loadu_ps(first(n), p);
  return _mm512_loadu_ps(p);
}

template <bool Masked>
inline __m512i load8(const int64_t* p, int64_t n) {  // 8 int64s
  if constexpr (Masked) return _mm512_maskz_loadu_epi64(__mmask8(first(n)), p);
  return _mm512_loadu_si512(p);
}

template <bool Masked>
inline void store(float* p, __m512 v, int64_t n) {
  if constexpr (Masked) _mm512_mask_storeu_ps(p, first(n), v); else _mm512_storeu_ps(p, v);
}

template <bool Masked>
inline void store8(int64_t* p, __m512i v, int64_t n) {  // 8 int64s
  if constexpr (Masked) _mm512_mask_storeu_epi64(p, __mmask8(first(n)), v);
  else _mm512_storeu_si512(p, v);
}

}  // namespace genkern::cpu::avx512
#pragma GCC pop_options
