#include "pool_2x2_rows.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <type_traits>

#include "small_gemm.h"

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>

#include "avx512_lanes.h"
#define GK_POOL_X86 1
#else
#define GK_POOL_X86 0
#endif

namespace genkern::cpu {

bool pool_2x2_rows_enabled() { return GK_POOL_X86 && avx512_kernels_enabled(); }

#if GK_POOL_X86
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx2,fma")
namespace {

using avx512::first;
using avx512::load;
using avx512::load8;
using avx512::store;

// p[2 i] = even[i], p[2 i + 1] = odd[i] for i < n <= 16.
template <bool Masked>
inline void store_interleaved(float* p, __m512 even, __m512 odd, int64_t n) {
  const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi =
      _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  store<Masked>(p, _mm512_permutex2var_ps(even, lo, odd), 2 * n);
  if (n > 8) store<Masked>(p + 16, _mm512_permutex2var_ps(even, hi, odd), 2 * n - 16);
}

// even[i] = p[2 i], odd[i] = p[2 i + 1] for i < n <= 16.
template <bool Masked>
inline void load_pairs(const float* p, int64_t n, __m512* even, __m512* odd) {
  const __m512i e = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i o = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  const __m512 a = load<Masked>(p, 2 * n);
  const __m512 b = n > 8 ? load<Masked>(p + 16, 2 * n - 16) : _mm512_setzero_ps();
  *even = _mm512_permutex2var_ps(a, e, b);
  *odd = _mm512_permutex2var_ps(a, o, b);
}

// Rows b = 0 (the upper input row) and b = 1 of a window row: all of the upper row's vectors go
// before the lower row's (a whole vector past the upper row's end writes into the lower row).
template <bool Masked>
void max_pool_row(const float* g, const int64_t* idx, float* gx, int64_t oh, int64_t OW) {
  const int64_t IW = 2 * OW;
  const __m512 zero = _mm512_setzero_ps();
  const __m512i even_cols = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
  for (int64_t b = 0; b < 2; ++b) {
    for (int64_t j = 0; j < OW; j += 16) {
      const int64_t n = std::min<int64_t>(16, OW - j);
      const __m512 v = _mm512_add_ps(load<Masked>(g + j, n), zero);  // -0 -> +0
      // each window's tap: its index less the window's corner, 2 oh IW + 2 ow (0, 1, IW, IW + 1)
      const __m512i corner = _mm512_add_epi64(_mm512_set1_epi64(2 * oh * IW + 2 * j), even_cols);
      const __m512i t_lo = _mm512_sub_epi64(load8<Masked>(idx + j, n), corner);
      const __m512i t_hi = n > 8 ? _mm512_sub_epi64(load8<Masked>(idx + j + 8, n - 8),
                                                    _mm512_add_epi64(corner, _mm512_set1_epi64(16)))
                                 : _mm512_set1_epi64(-1);
      const auto holds = [&](int64_t tap) {  // the windows whose maximum is at tap
        const __m512i t = _mm512_set1_epi64(tap);
        return _mm512_maskz_mov_ps(_mm512_kunpackb(_mm512_cmpeq_epi64_mask(t_hi, t),
                                                   _mm512_cmpeq_epi64_mask(t_lo, t)),
                                   v);
      };
      store_interleaved<Masked>(gx + b * IW + 2 * j, holds(b * IW), holds(b * IW + 1), n);
    }
  }
}

template <bool Masked>
void upsample_row(const float* x, float* y, int64_t IW) {
  for (int64_t b = 0; b < 2; ++b) {  // the upper output row's vectors, then the lower's
    for (int64_t j = 0; j < IW; j += 16) {
      const int64_t n = std::min<int64_t>(16, IW - j);
      const __m512 v = load<Masked>(x + j, n);
      store_interleaved<Masked>(y + b * 2 * IW + 2 * j, v, v, n);
    }
  }
}

template <bool Masked>
void upsample_backward_row(const float* gy, float* gx, int64_t IW) {
  for (int64_t j = 0; j < IW; j += 16) {
    const int64_t n = std::min<int64_t>(16, IW - j);
    __m512 a_even, a_odd, b_even, b_odd;
    load_pairs<Masked>(gy + 2 * j, n, &a_even, &a_odd);
    load_pairs<Masked>(gy + 2 * IW + 2 * j, n, &b_even, &b_odd);
    const __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a_even, a_odd), b_even), b_odd);
    store<Masked>(gx + j, s, n);
  }
}

}  // namespace

// Rows a whole vector of a row of width w reaches into past its own (16 of its lanes, 32 of an
// interleaved pair's): those from the range's last rows on are masked. row(i, masked) runs row i,
// masked a std::bool_constant.
template <typename Row>
void each_row(int64_t rows, int64_t w, Row&& row) {
  const int64_t whole = rows - std::min(rows, (16 + w - 1) / w);
  for (int64_t i = 0; i < whole; ++i) row(i, std::false_type{});
  for (int64_t i = whole; i < rows; ++i) row(i, std::true_type{});
}

void max_pool_2x2_backward_rows(const float* g, const int64_t* idx, float* gx, int64_t rows,
                                int64_t oh0, int64_t OH, int64_t OW) {
  each_row(rows, OW, [&](int64_t i, auto masked) {
    max_pool_row<decltype(masked)::value>(g + i * OW, idx + i * OW, gx + i * 4 * OW,
                                          (oh0 + i) % OH, OW);
  });
}

void upsample_2x_rows(const float* x, float* y, int64_t rows, int64_t IW) {
  each_row(rows, IW, [&](int64_t i, auto masked) {
    upsample_row<decltype(masked)::value>(x + i * IW, y + i * 4 * IW, IW);
  });
}

void upsample_2x_backward_rows(const float* gy, float* gx, int64_t rows, int64_t IW) {
  each_row(rows, IW, [&](int64_t i, auto masked) {
    upsample_backward_row<decltype(masked)::value>(gy + i * 4 * IW, gx + i * IW, IW);
  });
}

#pragma GCC pop_options
#else
// Never called: pool_2x2_rows_enabled() is false off x86-64.
void max_pool_2x2_backward_rows(const float*, const int64_t*, float*, int64_t, int64_t, int64_t,
                                int64_t) {
  TORCH_CHECK(false, "genkern: the 2x2 row kernels need an x86-64 CPU");
}
void upsample_2x_rows(const float*, float*, int64_t, int64_t) {
  TORCH_CHECK(false, "genkern: the 2x2 row kernels need an x86-64 CPU");
}
void upsample_2x_backward_rows(const float*, float*, int64_t, int64_t) {
  TORCH_CHECK(false, "genkern: the 2x2 row kernels need an x86-64 CPU");
}
#endif

}  // namespace genkern::cpu
