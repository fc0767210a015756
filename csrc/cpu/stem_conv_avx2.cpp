#include "stem_conv_avx2.h"

#include <algorithm>
#include <type_traits>
#include <vector>

#include "stem_conv_geometry.h"

#if GK_STEM_X86
#include <immintrin.h>

#include "avx2_lanes.h"

namespace genkern::cpu::stem_detail {
namespace {

#pragma GCC push_options
#pragma GCC target("avx2,fma")

// pixels or taps per tile: 6 x 2 ymm accumulators, 2 loads, 1 broadcast
constexpr int kRows = kGatherRows;
constexpr int kCols = 16;  // channels per tile: two ymm
constexpr int kLanes = 8;

// The tile's 6 x 2 accumulators a<r>_<v> as named variables (GCC keeps an array in memory).
#define GK_Y_ROWS(F) F(0) F(1) F(2) F(3) F(4) F(5)
#define GK_Y_ACC(r) __m256 a##r##_0 = _mm256_setzero_ps(), a##r##_1 = a##r##_0;
#define GK_Y_FMA(r, x)                             \
  if constexpr (R > r) {                           \
    const __m256 xv = _mm256_broadcast_ss(&(x));   \
    a##r##_0 = _mm256_fmadd_ps(xv, b0, a##r##_0);  \
    a##r##_1 = _mm256_fmadd_ps(xv, b1, a##r##_1);  \
  }

// y = act(v + bias) on one ymm, as act_forward computes it (the same bits)
template <Activation A, bool HasBias>
inline __m256 epilogue(__m256 v, __m256 bias, __m256 slope) {
  if constexpr (HasBias) v = _mm256_add_ps(v, bias);
  const __m256 zero = _mm256_setzero_ps();
  if constexpr (A == Activation::kRelu) v = _mm256_max_ps(zero, v);  // NaN and -0 pass through
  if constexpr (A == Activation::kLeakyRelu)
    v = _mm256_blendv_ps(_mm256_mul_ps(v, slope), v, _mm256_cmp_ps(v, zero, _CMP_GT_OQ));
  return v;
}

// Forward: y[r * ldy + c] = act(sum_k px[r][off[k]] * w[k * ldw + c] + bias[c]) for the first
// `rows` of kRows pixels and the `lanes` (all 16 when Full) channels of w's 16 columns.
template <Activation A, bool HasBias, bool Full>
void forward_tile(const float* const* px, const int64_t* off, int64_t taps, const float* w,
                  int64_t ldw, const float* bias, float slope, int rows, int64_t lanes, float* y,
                  int64_t ldy) {
  constexpr int R = kRows;
  GK_Y_ROWS(GK_Y_ACC)
  for (int64_t k = 0; k < taps; ++k) {
    const __m256 b0 = _mm256_loadu_ps(w + k * ldw), b1 = _mm256_loadu_ps(w + k * ldw + 8);
    const int64_t o = off[k];
#define GK_FWD(r) GK_Y_FMA(r, px[r][o])
    GK_Y_ROWS(GK_FWD)
#undef GK_FWD
  }
  const __m256i m0 = lanes_below(lanes), m1 = lanes_below(lanes - kLanes);
  const __m256 sl = _mm256_set1_ps(slope);
  __m256 bias0 = sl, bias1 = sl;
  if constexpr (HasBias) {
    bias0 = Full ? _mm256_loadu_ps(bias) : _mm256_maskload_ps(bias, m0);
    bias1 = Full ? _mm256_loadu_ps(bias + 8) : _mm256_maskload_ps(bias + 8, m1);
  }
#define GK_OUT(r)                                                               \
  if (r < rows) {                                                               \
    const __m256 v0 = epilogue<A, HasBias>(a##r##_0, bias0, sl);                \
    const __m256 v1 = epilogue<A, HasBias>(a##r##_1, bias1, sl);                \
    if constexpr (Full) {                                                       \
      _mm256_storeu_ps(y + r * ldy, v0);                                        \
      _mm256_storeu_ps(y + r * ldy + 8, v1);                                    \
    } else {                                                                    \
      _mm256_maskstore_ps(y + r * ldy, m0, v0);                                 \
      _mm256_maskstore_ps(y + r * ldy + 8, m1, v1);                             \
    }                                                                           \
  }
  GK_Y_ROWS(GK_OUT)
#undef GK_OUT
}

// Weight gradient: out[j * ldo + c] = sum_{p < count} xs[org[p] + off[j]] * g[p * ldg + c] for R
// taps j and the 16 columns of g from here (those past `lanes` read as 0), every sum in p order.
template <int R, bool Full>
void weight_grad_tile(const float* xs, const int64_t* org, int64_t count, const int64_t* off,
                      const float* g, int64_t ldg, int64_t lanes, float* out, int64_t ldo) {
  GK_Y_ROWS(GK_Y_ACC)
  const __m256i m0 = lanes_below(lanes), m1 = lanes_below(lanes - kLanes);
  int64_t o[R];
  for (int j = 0; j < R; ++j) o[j] = off[j];
  for (int64_t p = 0; p < count; ++p) {
    const float* gp = g + p * ldg;
    const __m256 b0 = Full ? _mm256_loadu_ps(gp) : _mm256_maskload_ps(gp, m0);
    const __m256 b1 = Full ? _mm256_loadu_ps(gp + 8) : _mm256_maskload_ps(gp + 8, m1);
    const float* xo = xs + org[p];
#define GK_WG(r) GK_Y_FMA(r, xo[o[r]])
    GK_Y_ROWS(GK_WG)
#undef GK_WG
  }
#define GK_STORE(r)                            \
  if constexpr (R > r) {                       \
    _mm256_storeu_ps(out + r * ldo, a##r##_0); \
    _mm256_storeu_ps(out + r * ldo + 8, a##r##_1); \
  }
  GK_Y_ROWS(GK_STORE)
#undef GK_STORE
}

#undef GK_Y_FMA
#undef GK_Y_ACC
#undef GK_Y_ROWS

// weight_grad_tile<rows, Full> for 1 <= rows <= kRows
template <bool Full, int R = 1>
void weight_grad_rows(int rows, const float* xs, const int64_t* org, int64_t count,
                      const int64_t* off, const float* g, int64_t ldg, int64_t lanes, float* out,
                      int64_t ldo) {
  if constexpr (R < kRows) {
    if (rows != R)
      return weight_grad_rows<Full, R + 1>(rows, xs, org, count, off, g, ldg, lanes, out, ldo);
  }
  weight_grad_tile<R, Full>(xs, org, count, off, g, ldg, lanes, out, ldo);
}

// One chunk's sums (see weight_grad_chunks): taps in blocks of at most kRows, as even as they go,
// per 16 channels; the bias sums (column sums of g) in p order after them.
void chunk_sums(const Stem& s, const float* xs, const int64_t* org, int64_t count,
                const int64_t* off, const float* g, bool need_bias, float* out) {
  const int64_t taps = s.taps(), width = s.panels() * kPanel;
  const int64_t blocks = (taps + kRows - 1) / kRows;
  for (int64_t c0 = 0; c0 < s.cout; c0 += kCols) {
    const int64_t lanes = s.cout - c0;
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t k0 = b * taps / blocks, k1 = (b + 1) * taps / blocks;
      const int tile = static_cast<int>(k1 - k0);
      float* tap_sums = out + k0 * width + c0;
      if (lanes >= kCols)
        weight_grad_rows<true>(tile, xs, org, count, off + k0, g + c0, s.cout, lanes, tap_sums,
                               width);
      else
        weight_grad_rows<false>(tile, xs, org, count, off + k0, g + c0, s.cout, lanes, tap_sums,
                                width);
    }
  }
  if (need_bias) {
    float* sums = out + taps * width;
    std::fill(sums, sums + s.cout, 0.f);
    for (int64_t p = 0; p < count; ++p)
      for (int64_t c = 0; c < s.cout; ++c) sums[c] += g[p * s.cout + c];
  }
}

template <Activation A, bool HasBias>
void forward_all(const Stem& s, const float* xs, const float* wpacked, const float* bias,
                 float slope, float* y, bool nchw) {
  const std::vector<int64_t> off = s.tap_offsets();
  const int64_t taps = s.taps();
  // tasks of about 16K multiply-adds, so that a batch-1 layer spreads too
  const int64_t grain = std::max<int64_t>(1, 16384 / (taps * s.cout * kRows));
  for_each_pixel_tile<kRows>(s, xs, grain, y, nchw, [&](const float* const* px, int rows,
                                                      float* tile_out) {
    for (int64_t c0 = 0; c0 < s.cout; c0 += kCols) {
      const float* w = wpacked + c0 / kPanel * taps * kPanel + c0 % kPanel;
      const float* b = HasBias ? bias + c0 : nullptr;
      float* out = tile_out + c0;
      if (s.cout - c0 >= kCols)
        forward_tile<A, HasBias, true>(px, off.data(), taps, w, kPanel, b, slope, rows, kCols,
                                       out, s.cout);
      else
        forward_tile<A, HasBias, false>(px, off.data(), taps, w, kPanel, b, slope, rows,
                                        s.cout - c0, out, s.cout);
    }
  });
}

}  // namespace

void forward_avx2(const Stem& s, const float* xs, const float* wpacked, const float* bias,
                  Activation act, float slope, float* y, bool nchw) {
  const auto run = [&](auto a) {
    constexpr Activation A = decltype(a)::value;
    if (bias != nullptr)
      forward_all<A, true>(s, xs, wpacked, bias, slope, y, nchw);
    else
      forward_all<A, false>(s, xs, wpacked, bias, slope, y, nchw);
  };
  if (act == Activation::kRelu)
    run(ActivationTag<Activation::kRelu>{});
  else if (act == Activation::kLeakyRelu)
    run(ActivationTag<Activation::kLeakyRelu>{});
  else
    run(ActivationTag<Activation::kIdentity>{});
}

void gather_tile_avx2(const float* const* px, int rows, const int64_t* off, int64_t taps,
                      const float* w, int64_t ldw, int64_t cols, float* out, int64_t ldo) {
  for (int64_t c0 = 0; c0 < cols; c0 += kCols)
    forward_tile<Activation::kIdentity, false, true>(px, off, taps, w + c0, ldw, nullptr, 0.f,
                                                     rows, kCols, out + c0, ldo);
}

void weight_grad_avx2(const Stem& s, const Padded& pad, const float* gy, const float* saved,
                      bool nchw, Activation act, float slope, bool need_bias, float* partial) {
  dispatch_activation(act, [&](auto a) {
    weight_grad_chunks<decltype(a)::value>(
        s, pad, gy, saved, nchw, slope, need_bias, partial,
        [&](const float* xs, const int64_t* org, int64_t count, const int64_t* off,
            const float* g, float* out) {
          chunk_sums(s, xs, org, count, off, g, need_bias, out);
        });
  });
}

#pragma GCC pop_options

}  // namespace genkern::cpu::stem_detail

#endif  // GK_STEM_X86
