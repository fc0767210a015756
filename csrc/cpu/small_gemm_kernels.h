// The loops of small_gemm.cpp: packing of B, the register-blocked tile and its epilogue, one task
// (one column panel over a range of rows). Included three times by small_gemm.cpp: as baseline
// code (a portable tile the compiler vectorizes for SSE2), under `#pragma GCC target("avx2,fma")`
// (GK_GEMM_AVX2: an intrinsics tile of 6 rows x 16 columns in 12 ymm accumulators) and under an
// AVX-512 target (GK_GEMM_AVX512: 12 rows x 16 columns in 12 zmm accumulators). The AVX2 and
// AVX-512 tiles compute every element as the same chain of FMAs over k in order (the same bits);
// the portable one rounds differently (no FMA). GK_GEMM_ROWS: the tile's rows.
// No include guard, on purpose; the headers it needs are included by small_gemm.cpp first.

namespace GK_GEMM_NS {

// Bp[k * width + j] = B[k, col0 + j] for j < cols, zero up to width: one panel, rows of `width`.
inline void pack_panel(const GemmArgs& g, int64_t col0, int cols, int width, float* bp) {
  if (g.b_cs == 1) {  // rows of B contiguous
    for (int64_t k = 0; k < g.K; ++k) {
      const float* src = g.B + k * g.b_rs + col0;
      float* dst = bp + k * width;
      for (int j = 0; j < cols; ++j) dst[j] = src[j];
      for (int j = cols; j < width; ++j) dst[j] = 0.f;
    }
  } else if (g.b_rs != 1) {  // neither way
    for (int64_t k = 0; k < g.K; ++k) {
      const float* src = g.B + k * g.b_rs + col0 * g.b_cs;
      float* dst = bp + k * width;
      for (int j = 0; j < cols; ++j) dst[j] = src[j * g.b_cs];
      for (int j = cols; j < width; ++j) dst[j] = 0.f;
    }
  } else {  // columns of B contiguous (the forward's W^T): read them in order
    for (int j = 0; j < cols; ++j) {
      const float* src = g.B + (col0 + j) * g.b_cs;
      for (int64_t k = 0; k < g.K; ++k) bp[k * width + j] = src[k];
    }
    for (int64_t k = 0; k < g.K; ++k)
      for (int j = cols; j < width; ++j) bp[k * width + j] = 0.f;
  }
}

constexpr int kRows = GK_GEMM_ROWS;

#if GK_GEMM_AVX512
// tile[r][j] = sum_k A[r, k] * Bp[k, j] for R rows, V * 8 columns (rows of Bp ldb apart): one zmm
// per row, the 8-column panel through a masked load (it reads nothing past the panel).
template <int R, int V>
void tile_kernel(int64_t K, const float* a, int64_t a_rs, int64_t a_cs, const float* bp,
                 int64_t ldb, float* tile) {
  static_assert(R >= 1 && R <= kRows && (V == 1 || V == 2), "tile shape");
  const __mmask16 mask = V > 1 ? 0xFFFF : 0x00FF;
#define GK_ACC(r) __m512 c##r = _mm512_setzero_ps();
  GK_ACC(0) GK_ACC(1) GK_ACC(2) GK_ACC(3) GK_ACC(4) GK_ACC(5)
  GK_ACC(6) GK_ACC(7) GK_ACC(8) GK_ACC(9) GK_ACC(10) GK_ACC(11)
#undef GK_ACC
#pragma GCC unroll 4
  for (int64_t k = 0; k < K; ++k) {
    const float* ak = a + k * a_cs;
    const __m512 b = _mm512_maskz_loadu_ps(mask, bp + k * ldb);
#define GK_FMA(r) \
  if constexpr (R > r) c##r = _mm512_fmadd_ps(_mm512_set1_ps(ak[r * a_rs]), b, c##r);
    GK_FMA(0) GK_FMA(1) GK_FMA(2) GK_FMA(3) GK_FMA(4) GK_FMA(5)
    GK_FMA(6) GK_FMA(7) GK_FMA(8) GK_FMA(9) GK_FMA(10) GK_FMA(11)
#undef GK_FMA
  }
#define GK_STORE(r) \
  if constexpr (R > r) _mm512_mask_storeu_ps(tile + r * kTileCols, mask, c##r);
  GK_STORE(0) GK_STORE(1) GK_STORE(2) GK_STORE(3) GK_STORE(4) GK_STORE(5)
  GK_STORE(6) GK_STORE(7) GK_STORE(8) GK_STORE(9) GK_STORE(10) GK_STORE(11)
#undef GK_STORE
}
#elif GK_GEMM_AVX2
// tile[r][j] = sum_k A[r, k] * Bp[k, j] for R rows, V * 8 columns (rows of Bp ldb apart):
// broadcast A, FMA with B rows. The accumulators are named variables, not an array: GCC keeps
// an array of them in memory too, one store per FMA.
template <int R, int V>
void tile_kernel(int64_t K, const float* a, int64_t a_rs, int64_t a_cs, const float* bp,
                 int64_t ldb, float* tile) {
  static_assert(R >= 1 && R <= kRows && (V == 1 || V == 2), "tile shape");
#define GK_ACC(r) __m256 c##r##0 = _mm256_setzero_ps(), c##r##1 = _mm256_setzero_ps();
  GK_ACC(0) GK_ACC(1) GK_ACC(2) GK_ACC(3) GK_ACC(4) GK_ACC(5)
#undef GK_ACC
#pragma GCC unroll 4
  for (int64_t k = 0; k < K; ++k) {
    const float* ak = a + k * a_cs;
    const __m256 b0 = _mm256_loadu_ps(bp + k * ldb);
    const __m256 b1 = V > 1 ? _mm256_loadu_ps(bp + k * ldb + 8) : b0;
#define GK_FMA(r)                                                    \
  if constexpr (R > r) {                                             \
    const __m256 ar = _mm256_broadcast_ss(ak + r * a_rs);            \
    c##r##0 = _mm256_fmadd_ps(ar, b0, c##r##0);                      \
    if constexpr (V > 1) c##r##1 = _mm256_fmadd_ps(ar, b1, c##r##1); \
  }
    GK_FMA(0) GK_FMA(1) GK_FMA(2) GK_FMA(3) GK_FMA(4) GK_FMA(5)
#undef GK_FMA
  }
#define GK_STORE(r)                                                           \
  if constexpr (R > r) {                                                      \
    _mm256_storeu_ps(tile + r * kTileCols, c##r##0);                          \
    if constexpr (V > 1) _mm256_storeu_ps(tile + r * kTileCols + 8, c##r##1); \
  }
  GK_STORE(0) GK_STORE(1) GK_STORE(2) GK_STORE(3) GK_STORE(4) GK_STORE(5)
#undef GK_STORE
}
#else
template <int R, int V>
void tile_kernel(int64_t K, const float* a, int64_t a_rs, int64_t a_cs, const float* bp,
                 int64_t ldb, float* tile) {
  constexpr int W = 8 * V;
  float acc[R][W] = {};
  for (int64_t k = 0; k < K; ++k) {
    const float* ak = a + k * a_cs;
    const float* bk = bp + k * ldb;
    for (int r = 0; r < R; ++r) {
      const float ar = ak[r * a_rs];
      for (int j = 0; j < W; ++j) acc[r][j] += ar * bk[j];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < W; ++j) tile[r * kTileCols + j] = acc[r][j];
}
#endif

// tile_kernel<rows, V> for a tile of 1..kRows rows (a chunk's last tile may be short).
template <int V, int R = 1>
void tile_rows(int rows, int64_t K, const float* a, int64_t a_rs, int64_t a_cs, const float* bp,
               int64_t ldb, float* tile) {
  if constexpr (R < kRows) {
    if (rows != R) return tile_rows<V, R + 1>(rows, K, a, a_rs, a_cs, bp, ldb, tile);
  }
  tile_kernel<R, V>(K, a, a_rs, a_cs, bp, ldb, tile);
}

// Whether panel `panel` is read from B in place (rows of B contiguous, all kTileCols columns
// there) rather than from its packed copy.
inline bool panel_in_place(const GemmArgs& g, int64_t panel) {
  return g.b_cs == 1 && (panel + 1) * kTileCols <= g.N;
}

// Packs panel `panel` of B (kTileCols columns, or 8 for a last one that narrow) into its slot
// of the packed buffer, K * kTileCols floats at panel * K * kTileCols; nothing if read in place.
inline void pack_task(const GemmArgs& g, int64_t panel, float* packed) {
  if (panel_in_place(g, panel)) return;
  const int64_t col0 = panel * kTileCols;
  const int cols = static_cast<int>(std::min<int64_t>(kTileCols, g.N - col0));
  pack_panel(g, col0, cols, cols <= 8 ? 8 : kTileCols, packed + panel * g.K * kTileCols);
}

// Panel `panel` of C over rows [r0, r1), from B in place or packed.
template <Activation A, bool HasBias>
void gemm_task(const GemmArgs& g, int64_t panel, int64_t r0, int64_t r1, const float* packed) {
  const int64_t col0 = panel * kTileCols;
  const int cols = static_cast<int>(std::min<int64_t>(kTileCols, g.N - col0));
  const bool in_place = panel_in_place(g, panel);
  const float* bp = in_place ? g.B + col0 : packed + panel * g.K * kTileCols;
  const int64_t ldb = in_place ? g.b_rs : (cols <= 8 ? 8 : kTileCols);
  float bias[kTileCols] = {};
  if constexpr (HasBias)
    for (int j = 0; j < cols; ++j) bias[j] = g.bias[(col0 + j) * g.bias_stride];
  alignas(64) float tile[kRows * kTileCols];
  for (int64_t r = r0; r < r1; r += kRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kRows, r1 - r));
    const float* a = g.A + r * g.a_rs;
    if (cols <= 8)
      tile_rows<1>(rows, g.K, a, g.a_rs, g.a_cs, bp, ldb, tile);
    else
      tile_rows<2>(rows, g.K, a, g.a_rs, g.a_cs, bp, ldb, tile);
    float* z = g.Z != nullptr ? g.Z + r * g.ldc + col0 : nullptr;
    store_block<A, HasBias>(tile, kTileCols, rows, cols, bias, g.slope, g.C + r * g.ldc + col0, z,
                            g.ldc);
  }
}

}  // namespace GK_GEMM_NS
