#include "head_convt.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <atomic>
#include <type_traits>

#include "conv_geometry.h"
#include "path_mode.h"
#include "small_gemm.h"  // avx512_kernels_enabled
#include "stem_conv_avx2.h"  // gather_tile_avx2
#include "zmm_tile.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#include <immintrin.h>

#include "avx2_lanes.h"
#define GK_HEAD_X86 1
#else
#define GK_HEAD_X86 0
#endif

namespace genkern::cpu {
namespace {

// genkern/ops/_head_convt.py sets it from GENKERN_CPU_HEAD_CONVT when genkern.ops is imported
std::atomic<int64_t> g_mode{1};

// The call's shape. Input pixel (iy, ix) adds its footprint (kh x kw x cout) at (iy * sh + ky,
// ix * sw + kx) of the uncropped output, whose window from (ph, pw) is the output.
struct Head {
  int64_t n, cin, h, w, cout, kh, kw, sh, sw, ph, pw, oh, ow;
  int64_t fh, fw;  // the uncropped output's rows and columns, as far as the output reaches
  int64_t cols() const { return kh * kw * cout; }          // a pixel's footprint
  int64_t ldv() const { return (cols() + 15) / 16 * 16; }  // in whole zmm
  int64_t acc_floats() const { return fh * fw * cout; }
};

Head head_of(const at::Tensor& x, const at::Tensor& weight, const std::vector<int64_t>& stride,
             const std::vector<int64_t>& padding, const std::vector<int64_t>& output_padding) {
  Head s{};
  s.n = x.size(0);
  s.cin = x.size(1);
  s.h = x.size(2);
  s.w = x.size(3);
  s.cout = weight.size(1);
  s.kh = weight.size(2);
  s.kw = weight.size(3);
  s.sh = stride[0];
  s.sw = stride[1];
  s.ph = padding[0];
  s.pw = padding[1];
  s.oh = transposed_output_size(s.h, s.kh, s.sh, s.ph, output_padding[0], 1);
  s.ow = transposed_output_size(s.w, s.kw, s.sw, s.pw, output_padding[1], 1);
  s.fh = std::max((s.h - 1) * s.sh + s.kh, s.ph + s.oh);
  s.fw = std::max((s.w - 1) * s.sw + s.kw, s.pw + s.ow);
  return s;
}

// weight [C_in, C_out, kH, kW] as rows c of ldv floats: column (ky * kW + kx) * C_out + co, zero
// past the footprint
std::vector<float> pack_weight(const Head& s, const at::Tensor& weight) {
  const at::Tensor w = weight.contiguous();
  const float* src = w.data_ptr<float>();
  std::vector<float> packed(s.cin * s.ldv(), 0.f);
  for (int64_t c = 0; c < s.cin; ++c)
    for (int64_t co = 0; co < s.cout; ++co)
      for (int64_t k = 0; k < s.kh * s.kw; ++k)
        packed[c * s.ldv() + k * s.cout + co] = src[(c * s.cout + co) * s.kh * s.kw + k];
  return packed;
}

// Passes over an input row's pixels for footprint vectors of L floats: footprints and vectors of
// one pass do not overlap (a load that overlaps a store still in flight waits for it).
int64_t footprint_passes(const Head& s, int64_t L) {
  const int64_t step = s.sw * s.cout;
  return std::max((s.kw + s.sw - 1) / s.sw, (L + step - 1) / step);
}

// f(std::integral_constant<int, L>) for the footprint vectors' width L: 4, 8 or 16 floats, at
// least a footprint row's kW * C_out
template <typename F>
void dispatch_footprint_width(const Head& s, F&& f) {
  const int64_t seg = s.kw * s.cout;
  if (seg <= 4)
    f(std::integral_constant<int, 4>{});
  else if (seg <= 8)
    f(std::integral_constant<int, 8>{});
  else
    f(std::integral_constant<int, 16>{});
}

// acc[(iy * sh + ky, ix * sw + kx)][co] += v[ix][(ky * kw + kx) * cout + co] for every pixel ix of
// input row iy: add(d, e) adds a vector of L floats (4, 8 or 16, L >= kw * cout) of footprint row
// e at d, per (pixel, ky). A load that overlaps a store still in flight waits for it (whatever
// the masks), so the pixels go in footprint_passes passes, that many apart: footprints and
// vectors of one pass do not overlap. Inlined into each ISA's caller, with its add.
template <int L, typename Add>
__attribute__((always_inline)) inline void for_each_footprint_vector(const Head& s, int64_t iy,
                                                                     const float* v, float* acc,
                                                                     Add&& add) {
  const int64_t seg = s.kw * s.cout, step = s.sw * s.cout, ldv = s.ldv();
  const int64_t q = footprint_passes(s, L);
  for (int64_t ky = 0; ky < s.kh; ++ky) {
    float* row = acc + (iy * s.sh + ky) * s.fw * s.cout;
    const float* vk = v + ky * seg;
    for (int64_t p = 0; p < q; ++p)
      for (int64_t ix = p; ix < s.w; ix += q) add(row + ix * step, vk + ix * ldv);
  }
}

// Sample n's uncropped output into acc (zeroed here): the footprints of a band of input rows at
// a time into v (tiles of R pixels run on across the band's rows: no tile is cut at a row's end),
// then added row by row. tile(px, rows, out): the footprints of R pixels (px, the last repeated
// past `rows`) into rows of ldv floats; add(iy, vr): input row iy's footprints vr into acc.
template <int R, typename Tile, typename Add>
void sample_footprints(const Head& s, const float* x, const int64_t* xs, int64_t n, int64_t band,
                       float* v, float* acc, Tile&& tile, Add&& add) {
  std::fill(acc, acc + s.acc_floats(), 0.f);
  const float* px[R];
  const float* sample = x + n * xs[0];
  for (int64_t iy0 = 0; iy0 < s.h; iy0 += band) {
    const int64_t rows = std::min(band, s.h - iy0), count = rows * s.w;
    for (int64_t p0 = 0; p0 < count; p0 += R) {
      for (int r = 0; r < R; ++r) {
        const int64_t p = std::min<int64_t>(p0 + r, count - 1);
        px[r] = sample + (iy0 + p / s.w) * xs[2] + p % s.w * xs[3];
      }
      tile(px, static_cast<int>(std::min<int64_t>(R, count - p0)), v + p0 * s.ldv());
    }
    for (int64_t iy = iy0; iy < iy0 + rows; ++iy) add(iy, v + (iy - iy0) * s.w * s.ldv());
  }
}

#if GK_HEAD_X86
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx2,fma")

// out[r * ldo + j] = sum_c px[r][c * sc] * w[c * ldo + j] for R pixels px and V zmm of columns
template <int R, int V>
void footprint_tile(const float* const* px, int64_t sc, int64_t cin, const float* w, float* out,
                    int64_t ldo) {
  GK_ROWS(GK_ACC_ROW)
  for (int64_t c = 0; c < cin; ++c) {
    GK_WEIGHT_ROW(w + c * ldo)
    const int64_t o = c * sc;
#define GK_HEAD_FMA(r) \
  if constexpr (R > r) GK_FMA_ROW(r, px[r][o])
    GK_ROWS(GK_HEAD_FMA)
#undef GK_HEAD_FMA
  }
  GK_ROWS(GK_STORE_ROW)
}

// for_each_footprint_vector with masked vectors of L floats, the mask the footprint row's floats
template <int L>
void add_footprints(const Head& s, int64_t iy, const float* v, float* acc) {
  const auto m = static_cast<__mmask16>((1u << (s.kw * s.cout)) - 1u);
  for_each_footprint_vector<L>(s, iy, v, acc, [m](float* d, const float* e) {
    if constexpr (L == 4) {
      const __m128 a = _mm_maskz_loadu_ps(m, d), b = _mm_maskz_loadu_ps(m, e);
      _mm_mask_storeu_ps(d, m, _mm_add_ps(a, b));
    } else if constexpr (L == 8) {
      const __m256 a = _mm256_maskz_loadu_ps(m, d), b = _mm256_maskz_loadu_ps(m, e);
      _mm256_mask_storeu_ps(d, m, _mm256_add_ps(a, b));
    } else {
      const __m512 a = _mm512_maskz_loadu_ps(m, d), b = _mm512_maskz_loadu_ps(m, e);
      _mm512_mask_storeu_ps(d, m, _mm512_add_ps(a, b));
    }
  });
}

// sample_footprints on AVX-512 tiles of V zmm of footprint columns
template <int V>
void sample_footprints_avx512(const Head& s, const float* x, const int64_t* xs, const float* w,
                              int64_t n, int64_t band, float* v, float* acc) {
  constexpr int R = tile_rows<V>();
  sample_footprints<R>(
      s, x, xs, n, band, v, acc,
      [&](const float* const* px, int, float* out) {
        footprint_tile<R, V>(px, xs[1], s.cin, w, out, s.ldv());
      },
      [&](int64_t iy, const float* vr) {
        dispatch_footprint_width(
            s, [&](auto L) { add_footprints<decltype(L)::value>(s, iy, vr, acc); });
      });
}

#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")

// for_each_footprint_vector on AVX2: unmasked loads and stores of L floats at the accumulator,
// each adding the footprint's vector ANDed to its kw * C_out floats (the lanes past it add +0:
// acc holds no -0, and acc and v have L floats of slack at their ends)
template <int L>
void add_footprints_avx2(const Head& s, int64_t iy, const float* v, float* acc) {
  const int64_t seg = s.kw * s.cout;
  const __m256 m0 = _mm256_castsi256_ps(lanes_below(seg));
  const __m256 m1 = _mm256_castsi256_ps(lanes_below(seg - 8));
  for_each_footprint_vector<L>(s, iy, v, acc, [m0, m1](float* d, const float* e) {
    if constexpr (L == 4) {
      const __m128 b = _mm_and_ps(_mm_loadu_ps(e), _mm256_castps256_ps128(m0));
      _mm_storeu_ps(d, _mm_add_ps(_mm_loadu_ps(d), b));
    } else {
      const __m256 b0 = _mm256_and_ps(_mm256_loadu_ps(e), m0);
      _mm256_storeu_ps(d, _mm256_add_ps(_mm256_loadu_ps(d), b0));
      if constexpr (L == 16) {
        const __m256 b1 = _mm256_and_ps(_mm256_loadu_ps(e + 8), m1);
        _mm256_storeu_ps(d + 8, _mm256_add_ps(_mm256_loadu_ps(d + 8), b1));
      }
    }
  });
}

// sample_footprints on stem_conv_avx2.h's gather tile; off[c] = c * xs[1]
void sample_footprints_avx2(const Head& s, const float* x, const int64_t* xs, const float* w,
                            const int64_t* off, int64_t n, int64_t band, float* v, float* acc) {
  sample_footprints<stem_detail::kGatherRows>(
      s, x, xs, n, band, v, acc,
      [&](const float* const* px, int rows, float* out) {
        stem_detail::gather_tile_avx2(px, rows, off, s.cin, w, s.ldv(), s.ldv(), out, s.ldv());
      },
      [&](int64_t iy, const float* vr) {
        dispatch_footprint_width(
            s, [&](auto L) { add_footprints_avx2<decltype(L)::value>(s, iy, vr, acc); });
      });
}

#pragma GCC pop_options
#endif  // GK_HEAD_X86

// y's sample n (strides ys) <- the output window of acc, plus bias (brow: the bias of each float
// of an output row of acc, pixels x channels)
void write_sample(const Head& s, const float* acc, const float* brow, float* y, const int64_t* ys,
                  int64_t n) {
  const bool rows = ys[1] == 1 && ys[3] == s.cout;  // channels_last (or one channel): a row's run
  for (int64_t oy = 0; oy < s.oh; ++oy) {
    const float* a = acc + ((oy + s.ph) * s.fw + s.pw) * s.cout;
    float* yr = y + n * ys[0] + oy * ys[2];
    if (rows) {
      for (int64_t i = 0; i < s.ow * s.cout; ++i) yr[i] = a[i] + brow[i];
      continue;
    }
    for (int64_t co = 0; co < s.cout; ++co) {
      float* yc = yr + co * ys[1];
      for (int64_t ox = 0; ox < s.ow; ++ox) yc[ox * ys[3]] = a[ox * s.cout + co] + brow[co];
    }
  }
}

}  // namespace

void set_head_convt_mode(int64_t mode) {
  set_path_mode(g_mode, mode, "head convt");
}

int64_t head_convt_mode() { return g_mode.load(); }

bool use_head_convt(const at::Tensor& x, const at::Tensor& weight, int64_t groups,
                    const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
                    const std::vector<int64_t>& output_padding,
                    const std::vector<int64_t>& dilation) {
  if (g_mode.load(std::memory_order_relaxed) == 0 || !GK_HEAD_X86 ||
      !avx2_kernels_enabled() || groups != 1 || x.dim() != 4 || weight.dim() != 4 ||
      x.scalar_type() != at::kFloat || weight.scalar_type() != at::kFloat || dilation[0] != 1 ||
      dilation[1] != 1)
    return false;
  const int64_t cout = weight.size(1), kh = weight.size(2), kw = weight.size(3);
  if (x.numel() == 0 || cout < 1 || kw * cout > 16 || kh * kw * cout > 64) return false;
  const Head s = head_of(x, weight, stride, padding, output_padding);
  return s.oh > 0 && s.ow > 0;  // else ATen's error
}

at::Tensor head_conv_transpose2d(const at::Tensor& x, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias,
                                 const std::vector<int64_t>& stride,
                                 const std::vector<int64_t>& padding,
                                 const std::vector<int64_t>& output_padding,
                                 at::MemoryFormat fmt) {
  const Head s = head_of(x, weight, stride, padding, output_padding);
  TORCH_CHECK(s.oh > 0 && s.ow > 0, "genkern: head_conv_transpose2d: empty output");
  at::Tensor y = at::empty({s.n, s.cout, s.oh, s.ow}, x.options().memory_format(fmt));
  at::Tensor b;
  if (bias.has_value() && bias->defined()) b = bias->contiguous();
#if GK_HEAD_X86
  const std::vector<float> w = pack_weight(s, weight);
  const float* xp = x.data_ptr<float>();
  std::vector<float> brow(s.ow * s.cout, 0.f);
  if (b.defined())
    for (int64_t i = 0; i < s.ow * s.cout; ++i) brow[i] = b.data_ptr<float>()[i % s.cout];
  float* yp = y.data_ptr<float>();
  const int64_t xs[4] = {x.stride(0), x.stride(1), x.stride(2), x.stride(3)};
  const int64_t ys[4] = {y.stride(0), y.stride(1), y.stride(2), y.stride(3)};
  // input rows per band: footprints of up to 16K floats, and a tile's rows past the band's end
  const int64_t band = std::clamp<int64_t>(16384 / (s.w * s.ldv()), 1, s.h);
  const bool avx512 = avx512_kernels_enabled();  // else AVX2 (use_head_convt)
  std::vector<int64_t> off(avx512 ? 0 : s.cin);    // the AVX2 tile's offsets of the channels
  for (int64_t c = 0; c < static_cast<int64_t>(off.size()); ++c) off[c] = c * xs[1];
  at::parallel_for(0, s.n, 1, [&](int64_t n0, int64_t n1) {
    // slack at the ends: a tile's rows past the band, the AVX2 adds' vectors past a footprint
    std::vector<float> v((band * s.w + kTileMaxRows) * s.ldv()), acc(s.acc_floats() + 16);
    for (int64_t n = n0; n < n1; ++n) {
      if (avx512) {
        dispatch_zmm(s.ldv() / 16, [&](auto zmm) {
          constexpr int V = decltype(zmm)::value;
          sample_footprints_avx512<V>(s, xp, xs, w.data(), n, band, v.data(), acc.data());
        });
      } else {
        sample_footprints_avx2(s, xp, xs, w.data(), off.data(), n, band, v.data(), acc.data());
      }
      write_sample(s, acc.data(), brow.data(), yp, ys, n);
    }
  });
#else
  TORCH_CHECK(false, "genkern: the head convt kernels need an x86-64 build");
#endif
  return y;
}

}  // namespace genkern::cpu
