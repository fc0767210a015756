#include "pool_2x2_groups.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <type_traits>

#include "pool_2x2_rows.h"

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>

#include "avx512_lanes.h"
#define GK_POOL_GROUPS_X86 1
#else
#define GK_POOL_GROUPS_X86 0
#endif

namespace genkern::cpu {

int64_t pool_2x2_group_rows(int64_t OW) { return std::max<int64_t>(1, 16 / OW); }

bool pool_2x2_groups_take(int64_t OH, int64_t OW) {
  return GK_POOL_GROUPS_X86 && pool_2x2_rows_enabled() && OW > 0 && OW <= 16 && OH > 0;
}

int64_t pool_2x2_group_count(int64_t planes, int64_t OH, int64_t OW) {
  const int64_t R = pool_2x2_group_rows(OW);
  return planes * ((OH + R - 1) / R);
}

int64_t pool_2x2_group_first_row(int64_t group, int64_t OH, int64_t OW) {
  const int64_t R = pool_2x2_group_rows(OW), per_plane = (OH + R - 1) / R;
  return group / per_plane * OH + group % per_plane * R;
}

#if GK_POOL_GROUPS_X86
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx2,fma")
namespace {

using avx512::load;
using avx512::load8;
using avx512::store;
using avx512::store8;

// Lane k's tap t (torch's order: upper left, upper right, lower left, lower right) among its
// group's inputs: rows of 2 OW inputs, each window row's upper row before its lower one; 0 for
// the lanes past the group's R OW windows.
int tap_position(int64_t OW, int k, int t) {
  if (k >= pool_2x2_group_rows(OW) * OW) return 0;
  return int(4 * OW * (k / OW) + 2 * (k % OW) + (t & 1) + (t >> 1) * 2 * OW);
}

struct TapTables {
  __m512i position[4];  // per tap: each lane's input (0-63)
  __mmask16 upper[4];   // the lanes whose input lies in the second 32
};

TapTables tap_tables(int64_t OW) {
  alignas(64) int32_t p[4][16];
  TapTables tb;
  for (int t = 0; t < 4; ++t) {
    for (int k = 0; k < 16; ++k) p[t][k] = tap_position(OW, k, t);
    tb.position[t] = _mm512_load_si512(p[t]);
    tb.upper[t] = _mm512_cmpge_epi32_mask(tb.position[t], _mm512_set1_epi32(32));
  }
  return tb;
}

// Per vector j of the group's inputs (16 j to 16 j + 15): each lane's window (0 past the group's
// 4 R OW inputs) and input.
struct WindowTables {
  __m512i window[4];
  __m512i input[4];
};

WindowTables window_tables(int64_t OW) {
  alignas(64) int32_t w[4][16], in[4][16];
  const int64_t inputs = 4 * OW * pool_2x2_group_rows(OW);
  WindowTables wt;
  for (int j = 0; j < 4; ++j) {
    for (int l = 0; l < 16; ++l) {
      const int p = 16 * j + l, row = int(p / (4 * OW)), col = int(p % (4 * OW) % (2 * OW));
      w[j][l] = p < inputs ? row * int(OW) + col / 2 : 0;
      in[j][l] = p;
    }
    wt.window[j] = _mm512_load_si512(w[j]);
    wt.input[j] = _mm512_load_si512(in[j]);
  }
  return wt;
}

template <Activation A>
inline __m512 activate(__m512 v, float slope) {
  const __m512 zero = _mm512_setzero_ps();
  if constexpr (A == Activation::kRelu) {  // v < 0 ? 0 : v
    return _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ), zero);
  } else if constexpr (A == Activation::kLeakyRelu) {  // v > 0 ? v : v * slope
    const __m512 neg = _mm512_mul_ps(v, _mm512_set1_ps(slope));
    return _mm512_mask_mov_ps(neg, _mm512_cmp_ps_mask(v, zero, _CMP_GT_OQ), v);
  } else {
    return v;
  }
}

// The lanes' values at one tap, out of the group's four input vectors.
inline __m512 at_tap(const __m512* z, const TapTables& tb, int t) {
  const __m512 lo = _mm512_permutex2var_ps(z[0], tb.position[t], z[1]);  // index bits 0-4
  const __m512 hi = _mm512_permutex2var_ps(z[2], tb.position[t], z[3]);
  return _mm512_mask_blend_ps(tb.upper[t], lo, hi);
}

// idx[i] = base + at[i] for the first n lanes (0 <= at[i] < 64), as int64: at[i] into the low
// half of each int64 lane, zeros into the high half.
template <bool Masked>
inline void store_indices(int64_t* idx, int64_t base, __m512i at, int64_t n) {
  const __m512i b = _mm512_set1_epi64(base);
  const __m512i lo = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
  const __m512i hi = _mm512_add_epi32(lo, _mm512_set1_epi32(8));
  const __m512i i0 = _mm512_add_epi64(b, _mm512_maskz_permutexvar_epi32(0x5555, lo, at));
  const __m512i i1 = _mm512_add_epi64(b, _mm512_maskz_permutexvar_epi32(0x5555, hi, at));
  store8<Masked>(idx, i0, n);
  store8<Masked>(idx + 8, i1, n - 8);
}

// The first n int64 at idx less base, as int32 (each within 0-63 here: the low halves).
template <bool Masked>
inline __m512i load_offsets(const int64_t* idx, int64_t base, int64_t n) {
  const __m512i b = _mm512_set1_epi64(base);
  const __m512i low_halves =
      _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i i0 = load8<Masked>(idx, n), i1 = load8<Masked>(idx + 8, n - 8);
  return _mm512_permutex2var_epi32(_mm512_sub_epi64(i0, b), low_halves, _mm512_sub_epi64(i1, b));
}

// The groups [g0, g1) one after another, each group's whole vectors loaded and stored (16
// windows, 64 inputs): past a group's windows and inputs they read the next groups' and write what
// the next group then overwrites; masked where they would reach past the range's end (a thread
// writes its own groups only). body(offset_rows, rows, row_in_plane, masked) runs one group,
// masked a std::bool_constant (rows: R where not masked, a whole vector's worth).
template <typename Body>
void each_group(int64_t g0, int64_t g1, int64_t OH, int64_t OW, Body&& body) {
  const int64_t R = pool_2x2_group_rows(OW), per_plane = (OH + R - 1) / R;
  const int64_t end = pool_2x2_group_first_row(g1, OH, OW) - pool_2x2_group_first_row(g0, OH, OW);
  int64_t row = g0 % per_plane * R;  // in its plane (no division per group: they cost as much)
  for (int64_t r = 0; r < end;) {
    const int64_t rows = std::min(R, OH - row);
    if ((end - r) * OW < 16)
      body(r, rows, row, std::true_type{});
    else
      body(r, rows, row, std::false_type{});
    r += rows;
    row = row + rows == OH ? 0 : row + rows;
  }
}

template <Activation A, bool I>
void forward(const float* x, float* y, int64_t* idx, int64_t g0, int64_t g1, int64_t OH,
             int64_t OW, const TapTables& tb, float slope) {
  const int64_t full = 4 * OW * pool_2x2_group_rows(OW);  // a whole group's inputs
  each_group(g0, g1, OH, OW, [&](int64_t r, int64_t rows, int64_t row, auto masked) {
    constexpr bool M = decltype(masked)::value;
    const float* xg = x + 4 * OW * r;
    const int64_t inputs = 4 * OW * rows;
    __m512 z[4];
    for (int j = 0; j < 4; ++j)
      z[j] = 16 * j < full ? load<M>(xg + 16 * j, inputs - 16 * j) : _mm512_setzero_ps();
    __m512 best = at_tap(z, tb, 0);
    __m512i at = tb.position[0];
    for (int t = 1; t < 4; ++t) {  // v > best or v is NaN: torch's rule
      const __m512 v = at_tap(z, tb, t);
      const __mmask16 take =
          _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
      best = _mm512_mask_mov_ps(best, take, v);
      at = _mm512_mask_mov_epi32(at, take, tb.position[t]);
    }
    store<M>(y + OW * r, activate<A>(best, slope), rows * OW);
    // the group's inputs start at input row 2 row of its plane
    if constexpr (I) store_indices<M>(idx + OW * r, 4 * OW * row, at, rows * OW);
  });
}

}  // namespace

void max_pool_2x2_forward_groups(const float* x, float* y, int64_t* idx, int64_t g0, int64_t g1,
                                 int64_t OH, int64_t OW, Activation act, float slope) {
  const TapTables tb = tap_tables(OW);
  const auto run = [&](auto tag) {
    constexpr Activation A = decltype(tag)::value;
    if (idx) return forward<A, true>(x, y, idx, g0, g1, OH, OW, tb, slope);
    forward<A, false>(x, y, nullptr, g0, g1, OH, OW, tb, slope);
  };
  if (act == Activation::kRelu) return run(ActivationTag<Activation::kRelu>{});
  if (act == Activation::kLeakyRelu) return run(ActivationTag<Activation::kLeakyRelu>{});
  TORCH_CHECK(act == Activation::kIdentity, "genkern: the pool groups store no such activation");
  run(ActivationTag<Activation::kIdentity>{});
}

namespace {

// act_backward(g, s) of ReLU and leaky ReLU (s: the saved output or input), NaN s as there
template <Activation A>
inline __m512 act_backward(__m512 g, __m512 s, float slope) {
  const __m512 zero = _mm512_setzero_ps();
  if constexpr (A == Activation::kRelu) {  // s <= 0 ? 0 : g
    return _mm512_mask_mov_ps(g, _mm512_cmp_ps_mask(s, zero, _CMP_LE_OQ), zero);
  } else if constexpr (A == Activation::kLeakyRelu) {  // s > 0 ? g : g * slope
    const __m512 neg = _mm512_mul_ps(g, _mm512_set1_ps(slope));
    return _mm512_mask_mov_ps(neg, _mm512_cmp_ps_mask(s, zero, _CMP_GT_OQ), g);
  } else {
    return g;
  }
}

template <Activation A>
void backward(const float* g, const float* saved, const int64_t* idx, float* gx, int64_t g0,
              int64_t g1, int64_t OH, int64_t OW, float slope) {
  const WindowTables wt = window_tables(OW);
  const int64_t full = 4 * OW * pool_2x2_group_rows(OW);
  each_group(g0, g1, OH, OW, [&](int64_t r, int64_t rows, int64_t row, auto masked) {
    constexpr bool M = decltype(masked)::value;
    const int64_t inputs = 4 * OW * rows;
    __m512 v = load<M>(g + OW * r, rows * OW);
    if constexpr (A != Activation::kIdentity)
      v = act_backward<A>(v, load<M>(saved + OW * r, rows * OW), slope);
    v = _mm512_add_ps(v, _mm512_setzero_ps());  // -0 -> +0, as the scatter into zeros adds it
    // each maximum's input in the group
    const __m512i at = load_offsets<M>(idx + OW * r, 4 * OW * row, rows * OW);
    float* out = gx + 4 * OW * r;
    for (int j = 0; 16 * j < full; ++j) {
      // (the maskz forms: GCC 12 warns of the plain ones' undefined operand)
      const __m512i holder = _mm512_maskz_permutexvar_epi32(0xffff, wt.window[j], at);
      const __mmask16 mine = _mm512_cmpeq_epi32_mask(holder, wt.input[j]);
      const __m512 gj = _mm512_maskz_permutexvar_ps(0xffff, wt.window[j], v);
      store<M>(out + 16 * j, _mm512_maskz_mov_ps(mine, gj), inputs - 16 * j);
    }
  });
}

}  // namespace

bool max_pool_2x2_groups_fuse_backward(Activation act) {
  return act == Activation::kIdentity || act == Activation::kRelu ||
         act == Activation::kLeakyRelu;
}

void max_pool_2x2_backward_groups(const float* g, const float* saved, const int64_t* idx,
                                  float* gx, int64_t g0, int64_t g1, int64_t OH, int64_t OW,
                                  Activation act, float slope) {
  if (act == Activation::kRelu)
    return backward<Activation::kRelu>(g, saved, idx, gx, g0, g1, OH, OW, slope);
  if (act == Activation::kLeakyRelu)
    return backward<Activation::kLeakyRelu>(g, saved, idx, gx, g0, g1, OH, OW, slope);
  TORCH_CHECK(act == Activation::kIdentity, "genkern: the pool groups fuse no such backward");
  backward<Activation::kIdentity>(g, saved, idx, gx, g0, g1, OH, OW, slope);
}

#pragma GCC pop_options
#else
// Never called: pool_2x2_groups_take() is false off x86-64.
void max_pool_2x2_forward_groups(const float*, float*, int64_t*, int64_t, int64_t, int64_t,
                                 int64_t, Activation, float) {
  TORCH_CHECK(false, "genkern: the 2x2 pool groups need an x86-64 CPU");
}
bool max_pool_2x2_groups_fuse_backward(Activation) { return false; }
void max_pool_2x2_backward_groups(const float*, const float*, const int64_t*, float*, int64_t,
                                  int64_t, int64_t, int64_t, Activation, float) {
  TORCH_CHECK(false, "genkern: the 2x2 pool groups need an x86-64 CPU");
}
#endif

}  // namespace genkern::cpu
