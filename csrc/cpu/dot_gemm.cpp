#include "dot_gemm.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>

#include "path_mode.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#include <immintrin.h>
#define GK_DOT_HAS_AVX512 1
#else
#define GK_DOT_HAS_AVX512 0
#endif

namespace genkern::cpu {
namespace {

std::atomic<int64_t> g_mode{1};

constexpr int kBlock = 4;  // rows of A and of B per register block: 4x4 elements of C
// Below this many multiply-adds one thread does it all: a parallel region costs more than it saves.
constexpr int64_t kSerialMacs = 256 * 1024;

#if GK_DOT_HAS_AVX512
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx2,fma")

// The lane sums of 16 vectors, v[p]'s in lane p: lanes paired within 64 bits, then 128, then the
// four 128-bit quarters, a fixed tree (the same bits every call).
inline __m512 fold16(const __m512* v) {
  __m512 u[8], w[4];
  for (int p = 0; p < 8; ++p)
    u[p] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * p], v[2 * p + 1]),
                         _mm512_unpackhi_ps(v[2 * p], v[2 * p + 1]));
  for (int q = 0; q < 4; ++q) {
    const __m512d x = _mm512_castps_pd(u[2 * q]), y = _mm512_castps_pd(u[2 * q + 1]);
    w[q] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  // w[q]'s quarter L holds quarter L's partial sums of v[4q .. 4q + 3]
  const __m512 s01 = _mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm512_shuffle_f32x4(w[0], w[1], _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512 s23 = _mm512_add_ps(_mm512_shuffle_f32x4(w[2], w[3], _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm512_shuffle_f32x4(w[2], w[3], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm512_add_ps(_mm512_shuffle_f32x4(s01, s23, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(s01, s23, _MM_SHUFFLE(3, 1, 3, 1)));
}

// sums[r * kBlock + j] = dot(a row r, b row j) over K for R rows of A (lda apart) and C rows of B
// (ldb apart); the accumulators are named variables (GCC keeps an array of them in memory).
template <int R, int C>
void dot_block(int64_t K, const float* a, int64_t lda, const float* b, int64_t ldb, float* sums) {
  static_assert(R >= 1 && R <= kBlock && C >= 1 && C <= kBlock, "block shape");
#define GK_ACC(i) \
  __m512 c##i##0 = _mm512_setzero_ps(), c##i##1 = c##i##0, c##i##2 = c##i##0, c##i##3 = c##i##0;
  GK_ACC(0) GK_ACC(1) GK_ACC(2) GK_ACC(3)
#undef GK_ACC
  // one 16-wide step at k under mask m (lanes past K read nothing and add zero)
#define GK_STEP(m)                                                                         \
  {                                                                                        \
    const __m512 a0 = _mm512_maskz_loadu_ps(m, a + k);                                     \
    const __m512 a1 = R > 1 ? _mm512_maskz_loadu_ps(m, a + lda + k) : a0;                  \
    const __m512 a2 = R > 2 ? _mm512_maskz_loadu_ps(m, a + 2 * lda + k) : a0;              \
    const __m512 a3 = R > 3 ? _mm512_maskz_loadu_ps(m, a + 3 * lda + k) : a0;              \
    GK_COL(0, m) GK_COL(1, m) GK_COL(2, m) GK_COL(3, m)                                    \
  }
#define GK_COL(j, m)                                                                       \
  if constexpr (C > j) {                                                                   \
    const __m512 bj = _mm512_maskz_loadu_ps(m, b + j * ldb + k);                           \
    c0##j = _mm512_fmadd_ps(a0, bj, c0##j);                                                \
    if constexpr (R > 1) c1##j = _mm512_fmadd_ps(a1, bj, c1##j);                           \
    if constexpr (R > 2) c2##j = _mm512_fmadd_ps(a2, bj, c2##j);                           \
    if constexpr (R > 3) c3##j = _mm512_fmadd_ps(a3, bj, c3##j);                           \
  }
  int64_t k = 0;
#pragma GCC unroll 2
  for (; k + 16 <= K; k += 16) GK_STEP(__mmask16(0xFFFF))
  if (k < K) GK_STEP(__mmask16((1u << (K - k)) - 1))
#undef GK_COL
#undef GK_STEP
  const __m512 v[16] = {c00, c01, c02, c03, c10, c11, c12, c13,
                        c20, c21, c22, c23, c30, c31, c32, c33};
  _mm512_storeu_ps(sums, fold16(v));
}

template <int R>
void dot_block_cols(int cols, int64_t K, const float* a, int64_t lda, const float* b, int64_t ldb,
                    float* sums) {
  switch (cols) {
    case 1: return dot_block<R, 1>(K, a, lda, b, ldb, sums);
    case 2: return dot_block<R, 2>(K, a, lda, b, ldb, sums);
    case 3: return dot_block<R, 3>(K, a, lda, b, ldb, sums);
    default: return dot_block<R, 4>(K, a, lda, b, ldb, sums);
  }
}

void dot_block_any(int rows, int cols, int64_t K, const float* a, int64_t lda, const float* b,
                   int64_t ldb, float* sums) {
  switch (rows) {
    case 1: return dot_block_cols<1>(cols, K, a, lda, b, ldb, sums);
    case 2: return dot_block_cols<2>(cols, K, a, lda, b, ldb, sums);
    case 3: return dot_block_cols<3>(cols, K, a, lda, b, ldb, sums);
    default: return dot_block_cols<4>(cols, K, a, lda, b, ldb, sums);
  }
}

#pragma GCC pop_options
#else
void dot_block_any(int, int, int64_t, const float*, int64_t, const float*, int64_t, float*) {}
#endif

// Rows [r0, r1) x columns [n0, n1) of C, block by block.
template <Activation A, bool HasBias>
void dot_task(const GemmArgs& g, int64_t r0, int64_t r1, int64_t n0, int64_t n1) {
  alignas(64) float sums[kBlock * kBlock];
  float bias[kBlock] = {};
  for (int64_t n = n0; n < n1; n += kBlock) {
    const int cols = static_cast<int>(std::min<int64_t>(kBlock, n1 - n));
    if constexpr (HasBias)
      for (int j = 0; j < cols; ++j) bias[j] = g.bias[(n + j) * g.bias_stride];
    for (int64_t r = r0; r < r1; r += kBlock) {
      const int rows = static_cast<int>(std::min<int64_t>(kBlock, r1 - r));
      dot_block_any(rows, cols, g.K, g.A + r * g.a_rs, g.a_rs, g.B + n * g.b_cs, g.b_cs, sums);
      float* z = g.Z != nullptr ? g.Z + r * g.ldc + n : nullptr;
      store_block<A, HasBias>(sums, kBlock, rows, cols, bias, g.slope, g.C + r * g.ldc + n, z,
                              g.ldc);
    }
  }
}

// Tasks are row ranges (each over every column: B's rows stay in L1 while the rows of A pass), or
// column ranges when there are too few rows to share (a batch-1 layer).
template <Activation A, bool HasBias>
void run(const GemmArgs& g) {
  const int64_t row_blocks = (g.M + kBlock - 1) / kBlock, col_blocks = (g.N + kBlock - 1) / kBlock;
  const bool serial = g.M * g.N * g.K < kSerialMacs;
  const bool by_rows = row_blocks >= 2 * at::get_num_threads() || row_blocks >= col_blocks;
  const int64_t tasks = by_rows ? row_blocks : col_blocks;
  at::parallel_for(0, tasks, serial ? tasks : 1, [&](int64_t t0, int64_t t1) {
    const int64_t lo = t0 * kBlock, hi = t1 * kBlock;
    if (by_rows)
      dot_task<A, HasBias>(g, lo, std::min(g.M, hi), 0, g.N);
    else
      dot_task<A, HasBias>(g, 0, g.M, lo, std::min(g.N, hi));
  });
}

}  // namespace

void set_dot_gemm_mode(int64_t mode) {
  set_path_mode(g_mode, mode, "dot GEMM");
}

int64_t dot_gemm_mode() { return g_mode.load(); }

// The rule, from a grid of forward calls on a 2-core Xeon (AVX-512; M 1-128, K 1-1024, N 1-1024,
// against the path taken before: MKL, or the broadcast tile with W packed where that won). A few
// rows (batch-1 layers): 1.4-2.3x wherever K >= 16 or N <= 64 (MKL's fixed cost; nothing to
// amortize a pack over); up to 32 rows: 1.1-2x from K = 64 on; more rows: the tile and MKL reuse
// each load of W over many rows and win once N passes ~128 (128x400 -> 20 1.8x, -> 128 1.08x,
// -> 512 0.85x), and a short k leaves the fold of the lanes too little to hide behind (K = 64:
// 0.7-1.0x).
bool use_dot_gemm(int64_t M, int64_t N, int64_t K) {
  const int64_t mode = g_mode.load();
  if (mode == 0 || M <= 0 || N <= 0 || K <= 0 || !avx512_kernels_enabled()) return false;
  if (mode == 2) return true;
  if (M < 8) return K >= 16 || N <= 64;
  if (K < 64) return false;
  if (M <= 32) return true;
  return K >= 128 && N <= (K >= 192 ? 128 : 32);
}

void dot_gemm_f32(const GemmArgs& g) {
  if (g.M == 0 || g.N == 0) return;
  TORCH_CHECK(g.a_cs == 1 && g.b_rs == 1 && avx512_kernels_enabled(),
              "genkern: dot_gemm_f32 needs k-contiguous operands and AVX-512");
  dispatch_epilogue(g, [&](auto act, auto bias) {
    run<decltype(act)::value, decltype(bias)::value>(g);
  });
}

}  // namespace genkern::cpu
