#include "dot_gemm.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>

#include "path_mode.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#include <immintrin.h>

#include "avx2_lanes.h"
#define GK_DOT_X86 1
#else
#define GK_DOT_X86 0
#endif

namespace genkern::cpu {
namespace {

std::atomic<int64_t> g_mode{1};

// Register blocks of C: 4x4 elements on AVX-512 (16 zmm accumulators), 2x4 on AVX2 (8 of its 16
// ymm: the loads of A's two rows and B's row take three more).
constexpr int kBlock = 4;
constexpr int kBlockRowsAvx2 = 2;
// Below this many multiply-adds one thread does it all: a parallel region costs more than it saves.
constexpr int64_t kSerialMacs = 256 * 1024;

#if GK_DOT_X86
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

#pragma GCC push_options
#pragma GCC target("avx2,fma")

// The lane sums of 8 vectors, v[p]'s in lane p: lanes paired within 64 bits, then 128, then the
// two 128-bit halves, a fixed tree (the same bits every call).
inline __m256 fold8(const __m256* v) {
  __m256 u[4], w[2];
  for (int p = 0; p < 4; ++p)
    u[p] = _mm256_add_ps(_mm256_unpacklo_ps(v[2 * p], v[2 * p + 1]),
                         _mm256_unpackhi_ps(v[2 * p], v[2 * p + 1]));
  for (int q = 0; q < 2; ++q) {
    const __m256d x = _mm256_castps_pd(u[2 * q]), y = _mm256_castps_pd(u[2 * q + 1]);
    w[q] = _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(x, y)),
                         _mm256_castpd_ps(_mm256_unpackhi_pd(x, y)));
  }
  // w[q]'s half H holds half H's partial sums of v[4q .. 4q + 3]
  return _mm256_add_ps(_mm256_permute2f128_ps(w[0], w[1], 0x20),
                       _mm256_permute2f128_ps(w[0], w[1], 0x31));
}

// dot_block on AVX2: sums[r * kBlock + j] for R <= 2 rows of A and C <= 4 rows of B
template <int R, int C>
void dot_block_avx2(int64_t K, const float* a, int64_t lda, const float* b, int64_t ldb,
                    float* sums) {
  static_assert(R >= 1 && R <= kBlockRowsAvx2 && C >= 1 && C <= kBlock, "block shape");
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c02 = c00, c03 = c00;
  __m256 c10 = c00, c11 = c00, c12 = c00, c13 = c00;
  // one 8-wide step at k, loads through ld (lanes past K read nothing and add zero)
#define GK_STEP(ld)                                   \
  {                                                   \
    const __m256 a0 = ld(a + k);                      \
    const __m256 a1 = R > 1 ? ld(a + lda + k) : a0;   \
    GK_COL(0, ld) GK_COL(1, ld) GK_COL(2, ld) GK_COL(3, ld) \
  }
#define GK_COL(j, ld)                                                        \
  if constexpr (C > j) {                                                     \
    const __m256 bj = ld(b + j * ldb + k);                                   \
    c0##j = _mm256_fmadd_ps(a0, bj, c0##j);                                  \
    if constexpr (R > 1) c1##j = _mm256_fmadd_ps(a1, bj, c1##j);             \
  }
  int64_t k = 0;
#pragma GCC unroll 2
  for (; k + 8 <= K; k += 8) GK_STEP(_mm256_loadu_ps)
  if (k < K) {
    const __m256i m = lanes_below(K - k);
    const auto masked = [m](const float* p) { return _mm256_maskload_ps(p, m); };
    GK_STEP(masked)
  }
#undef GK_COL
#undef GK_STEP
  const __m256 v[8] = {c00, c01, c02, c03, c10, c11, c12, c13};
  _mm256_storeu_ps(sums, fold8(v));
}

template <int R>
void dot_block_cols_avx2(int cols, int64_t K, const float* a, int64_t lda, const float* b,
                         int64_t ldb, float* sums) {
  switch (cols) {
    case 1: return dot_block_avx2<R, 1>(K, a, lda, b, ldb, sums);
    case 2: return dot_block_avx2<R, 2>(K, a, lda, b, ldb, sums);
    case 3: return dot_block_avx2<R, 3>(K, a, lda, b, ldb, sums);
    default: return dot_block_avx2<R, 4>(K, a, lda, b, ldb, sums);
  }
}

void dot_block_any_avx2(int rows, int cols, int64_t K, const float* a, int64_t lda,
                        const float* b, int64_t ldb, float* sums) {
  if (rows == 1) return dot_block_cols_avx2<1>(cols, K, a, lda, b, ldb, sums);
  dot_block_cols_avx2<2>(cols, K, a, lda, b, ldb, sums);
}

#pragma GCC pop_options
#else
void dot_block_any(int, int, int64_t, const float*, int64_t, const float*, int64_t, float*) {}
void dot_block_any_avx2(int, int, int64_t, const float*, int64_t, const float*, int64_t,
                        float*) {}
#endif

// The register blocks of one ISA: rows x kBlock elements of C, summed by any(rows, cols, ...) into
// sums (rows of kBlock)
struct Avx512Blocks {
  static constexpr int kRows = kBlock;
  static void any(int rows, int cols, int64_t K, const float* a, int64_t lda, const float* b,
                  int64_t ldb, float* sums) {
    dot_block_any(rows, cols, K, a, lda, b, ldb, sums);
  }
};
struct Avx2Blocks {
  static constexpr int kRows = kBlockRowsAvx2;
  static void any(int rows, int cols, int64_t K, const float* a, int64_t lda, const float* b,
                  int64_t ldb, float* sums) {
    dot_block_any_avx2(rows, cols, K, a, lda, b, ldb, sums);
  }
};

// Rows [r0, r1) x columns [n0, n1) of C, block by block.
template <typename Blocks, Activation A, bool HasBias>
void dot_task(const GemmArgs& g, int64_t r0, int64_t r1, int64_t n0, int64_t n1) {
  alignas(64) float sums[kBlock * kBlock];
  float bias[kBlock] = {};
  for (int64_t n = n0; n < n1; n += kBlock) {
    const int cols = static_cast<int>(std::min<int64_t>(kBlock, n1 - n));
    if constexpr (HasBias)
      for (int j = 0; j < cols; ++j) bias[j] = g.bias[(n + j) * g.bias_stride];
    for (int64_t r = r0; r < r1; r += Blocks::kRows) {
      const int rows = static_cast<int>(std::min<int64_t>(Blocks::kRows, r1 - r));
      Blocks::any(rows, cols, g.K, g.A + r * g.a_rs, g.a_rs, g.B + n * g.b_cs, g.b_cs, sums);
      float* z = g.Z != nullptr ? g.Z + r * g.ldc + n : nullptr;
      store_block<A, HasBias>(sums, kBlock, rows, cols, bias, g.slope, g.C + r * g.ldc + n, z,
                              g.ldc);
    }
  }
}

// Tasks are row ranges (each over every column: B's rows stay in L1 while the rows of A pass), or
// column ranges when there are too few rows to share (a batch-1 layer).
template <typename Blocks, Activation A, bool HasBias>
void run(const GemmArgs& g) {
  constexpr int64_t R = Blocks::kRows;
  const int64_t row_blocks = (g.M + R - 1) / R, col_blocks = (g.N + kBlock - 1) / kBlock;
  const bool serial = g.M * g.N * g.K < kSerialMacs;
  const bool by_rows = row_blocks >= 2 * at::get_num_threads() || row_blocks >= col_blocks;
  const int64_t tasks = by_rows ? row_blocks : col_blocks;
  at::parallel_for(0, tasks, serial ? tasks : 1, [&](int64_t t0, int64_t t1) {
    if (by_rows)
      dot_task<Blocks, A, HasBias>(g, t0 * R, std::min(g.M, t1 * R), 0, g.N);
    else
      dot_task<Blocks, A, HasBias>(g, 0, g.M, t0 * kBlock, std::min(g.N, t1 * kBlock));
  });
}

}  // namespace

void set_dot_gemm_mode(int64_t mode) {
  set_path_mode(g_mode, mode, "dot GEMM");
}

int64_t dot_gemm_mode() { return g_mode.load(); }

// The rule on AVX2 CPUs, from forward calls on a 2-core AMD EPYC (Zen 1) against the path taken
// before (MKL, or the AVX2 broadcast tile with W packed where that won), relu, dot / other us. A
// few rows: every k (1 x 20 -> 256 14 / 18, 1 x 256 -> 3136 76 / 132, 8 x 100 -> 512 37 / 51).
// A long k (128 x 2048 -> 256 1876 / 2363, 256 x 1024 -> 1024 8190 / 9584, 64 x 8192 -> 1 51 /
// 282). k from 256 up to 128 rows (128 x 256 -> 3136 3562 / 4595; 256 x 256 -> 256 543 / 514).
// A short k over more rows goes to the tile and MKL (128 x 20 -> 256 121 / 41, 32 x 100 -> 64
// 34 / 27, 128 x 100 -> 512 376 / 272).
static bool use_dot_gemm_avx2(int64_t M, int64_t K) {
  return M <= 8 || K >= 1024 || (K >= 256 && M <= 128);
}

// The rule, from a grid of forward calls on a 2-core Xeon (AVX-512; M 1-128, K 1-1024, N 1-1024,
// against the path taken before: MKL, or the broadcast tile with W packed where that won). A few
// rows (batch-1 layers): 1.4-2.3x wherever K >= 16 or N <= 64 (MKL's fixed cost; nothing to
// amortize a pack over); up to 32 rows: 1.1-2x from K = 64 on; more rows: the tile and MKL reuse
// each load of W over many rows and win once N passes ~128 (128x400 -> 20 1.8x, -> 128 1.08x,
// -> 512 0.85x), and a short k leaves the fold of the lanes too little to hide behind (K = 64:
// 0.7-1.0x).
bool use_dot_gemm(int64_t M, int64_t N, int64_t K) {
  const int64_t mode = g_mode.load();
  if (mode == 0 || M <= 0 || N <= 0 || K <= 0 || !GK_DOT_X86 || !avx2_kernels_enabled())
    return false;
  if (mode == 2) return true;
  if (!avx512_kernels_enabled()) return use_dot_gemm_avx2(M, K);
  if (M < 8) return K >= 16 || N <= 64;
  if (K < 64) return false;
  if (M <= 32) return true;
  return K >= 128 && N <= (K >= 192 ? 128 : 32);
}

void dot_gemm_f32(const GemmArgs& g) {
  if (g.M == 0 || g.N == 0) return;
  TORCH_CHECK(g.a_cs == 1 && g.b_rs == 1 && avx2_kernels_enabled(),
              "genkern: dot_gemm_f32 needs k-contiguous operands and AVX2");
  const bool avx512 = avx512_kernels_enabled();
  dispatch_epilogue(g, [&](auto act, auto bias) {
    constexpr Activation A = decltype(act)::value;
    constexpr bool HasBias = decltype(bias)::value;
    if (avx512)
      run<Avx512Blocks, A, HasBias>(g);
    else
      run<Avx2Blocks, A, HasBias>(g);
  });
}

}  // namespace genkern::cpu
