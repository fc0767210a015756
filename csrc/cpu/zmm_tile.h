// The register tile of genkern's AVX-512 kernels (stem_conv.cpp, head_convt.cpp): up to 12 rows
// x 4 zmm of float32 accumulators, a<r>_<v>, as named variables (GCC keeps an array of them in
// memory). The macros expand inside a `#pragma GCC target("avx512f,...")` region, after
// <immintrin.h>; a function using them has constexpr R (rows) and V (zmm per row) in scope,
// R * V <= 24 live.
#pragma once

#include <cstdint>
#include <type_traits>

namespace genkern::cpu {

constexpr int kTileMaxRows = 12;

// rows per tile for V zmm: 24 accumulators (12 for one or two zmm: the loads bound it)
template <int V>
constexpr int tile_rows() {
  return V == 4 ? 6 : V == 3 ? 8 : kTileMaxRows;
}

// f(std::integral_constant<int, V>) for V = zmm (1 to 4 zmm per tile row; more is 4)
template <typename F>
void dispatch_zmm(int64_t zmm, F&& f) {
  switch (zmm) {
    case 1:
      return f(std::integral_constant<int, 1>{});
    case 2:
      return f(std::integral_constant<int, 2>{});
    case 3:
      return f(std::integral_constant<int, 3>{});
    default:
      return f(std::integral_constant<int, 4>{});
  }
}

}  // namespace genkern::cpu

// GK_ROWS(GK_ACC_ROW): declares the zeroed accumulators.
// GK_WEIGHT_ROW(p): b0..b3, the V zmm of one weight row from p (unused ones alias b0).
// GK_FMA_ROW(r, x): row r += x * (b0, b1, b2, b3), the zmm of one weight row (b<v> in scope).
// GK_STORE_ROW(r): stores row r to out + r * ldo (out, ldo in scope).
#define GK_ACC_ROW(r)                                                              \
  __m512 a##r##_0 = _mm512_setzero_ps(), a##r##_1 = a##r##_0, a##r##_2 = a##r##_0, \
         a##r##_3 = a##r##_0;
#define GK_ROWS(F) F(0) F(1) F(2) F(3) F(4) F(5) F(6) F(7) F(8) F(9) F(10) F(11)
#define GK_WEIGHT_ROW(p)                                        \
  const __m512 b0 = _mm512_loadu_ps(p);                         \
  const __m512 b1 = V > 1 ? _mm512_loadu_ps((p) + 16) : b0;     \
  const __m512 b2 = V > 2 ? _mm512_loadu_ps((p) + 32) : b0;     \
  const __m512 b3 = V > 3 ? _mm512_loadu_ps((p) + 48) : b0;
#define GK_FMA_ROW(r, x)                                               \
  {                                                                    \
    const __m512 xv = _mm512_set1_ps(x);                               \
    a##r##_0 = _mm512_fmadd_ps(xv, b0, a##r##_0);                      \
    if constexpr (V > 1) a##r##_1 = _mm512_fmadd_ps(xv, b1, a##r##_1); \
    if constexpr (V > 2) a##r##_2 = _mm512_fmadd_ps(xv, b2, a##r##_2); \
    if constexpr (V > 3) a##r##_3 = _mm512_fmadd_ps(xv, b3, a##r##_3); \
  }
#define GK_STORE_ROW(r)                                                  \
  if constexpr (R > r) {                                                 \
    _mm512_storeu_ps(out + r * ldo, a##r##_0);                           \
    if constexpr (V > 1) _mm512_storeu_ps(out + r * ldo + 16, a##r##_1); \
    if constexpr (V > 2) _mm512_storeu_ps(out + r * ldo + 32, a##r##_2); \
    if constexpr (V > 3) _mm512_storeu_ps(out + r * ldo + 48, a##r##_3); \
  }
