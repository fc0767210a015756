// The register tile of conv_wgrad.cpp, included twice by it: under `#pragma GCC target("avx2,fma")`
// (GK_WT_NS wgrad_avx2: 6 rows x 16 columns, two ymm per row) and under an AVX-512 target
// (wgrad_avx512: 12 rows x 32 columns, two zmm per row). Both sum each element as the same chain
// of FMAs over the listed pixels (the same bits). GK_WT_VEC, GK_WT_LANES, GK_WT_ZERO, GK_WT_LOAD,
// GK_WT_STORE, GK_WT_SET1, GK_WT_FMA and GK_WT_ADD name the width's type and intrinsics.
// No include guard, on purpose; <immintrin.h> is included by conv_wgrad.cpp first.

namespace GK_WT_NS {

#define GK_W_ROWS(F) F(0) F(1) F(2) F(3) F(4) F(5) F(6) F(7) F(8) F(9) F(10) F(11)
// The tile's R x 2 accumulators a<r>_<v> as named variables (GCC keeps an array in memory).
#define GK_W_ACC(r) GK_WT_VEC a##r##_0 = GK_WT_ZERO(), a##r##_1 = a##r##_0;
#define GK_W_FMA(r)                                 \
  if constexpr (R > r) {                            \
    const GK_WT_VEC gv = GK_WT_SET1(gp[r]);         \
    a##r##_0 = GK_WT_FMA(gv, x0, a##r##_0);         \
    a##r##_1 = GK_WT_FMA(gv, x1, a##r##_1);         \
  }
#define GK_W_STORE(r)                                                                   \
  if constexpr (R > r) {                                                                \
    float* q = d + r * ldd;                                                             \
    GK_WT_STORE(q, first ? a##r##_0 : GK_WT_ADD(GK_WT_LOAD(q), a##r##_0));              \
    GK_WT_STORE(q + GK_WT_LANES,                                                        \
                first ? a##r##_1 : GK_WT_ADD(GK_WT_LOAD(q + GK_WT_LANES), a##r##_1));   \
  }

// d[r * ldd + j] (+)= sum_i g[goff[i] + r] * x[xoff[i] + j] for r < R, j < 2 lanes: stored when
// first, added otherwise.
template <int R>
void tile(const float* g, const float* x, const int64_t* goff, const int64_t* xoff, int64_t count,
          float* d, int64_t ldd, bool first) {
  GK_W_ROWS(GK_W_ACC)
  for (int64_t i = 0; i < count; ++i) {
    const float* gp = g + goff[i];
    const float* xp = x + xoff[i];
    const GK_WT_VEC x0 = GK_WT_LOAD(xp), x1 = GK_WT_LOAD(xp + GK_WT_LANES);
    GK_W_ROWS(GK_W_FMA)
  }
  GK_W_ROWS(GK_W_STORE)
}

#undef GK_W_ROWS
#undef GK_W_ACC
#undef GK_W_FMA
#undef GK_W_STORE

}  // namespace GK_WT_NS
