#include "stem_conv.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <atomic>

#include "conv_geometry.h"
#include "dispatch_bool.h"
#include "layout_copy.h"
#include "genkern/activation.h"
#include "path_mode.h"
#include "small_gemm.h"
#include "stem_conv_avx2.h"
#include "stem_conv_geometry.h"
#include "zmm_tile.h"

#if GK_STEM_X86
#include <immintrin.h>
#endif

namespace genkern::cpu {
namespace {

using namespace stem_detail;  // NOLINT: the kernels' geometry

// genkern/ops/_stem_conv.py sets it from GENKERN_CPU_STEM_CONV when genkern.ops is imported
std::atomic<int64_t> g_mode{1};

Stem stem_of(const at::Tensor& x, const at::Tensor& weight, const std::vector<int64_t>& stride,
             const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation) {
  Stem s{};
  s.n = x.size(0);
  s.cin = x.size(1);
  s.hp = x.size(2) + 2 * padding[0];
  s.wp = x.size(3) + 2 * padding[1];
  s.cout = weight.size(0);
  s.kh = weight.size(2);
  s.kw = weight.size(3);
  s.oh = conv_output_size(x.size(2), s.kh, stride[0], padding[0], dilation[0]);
  s.ow = conv_output_size(x.size(3), s.kw, stride[1], padding[1], dilation[1]);
  s.sh = stride[0];
  s.sw = stride[1];
  s.dh = dilation[0];
  s.dw = dilation[1];
  return s;
}

// The whole padded copy, a row per task step.
at::Tensor padded_nhwc(const at::Tensor& x, int64_t ph, int64_t pw) {
  const Padded pad(x, ph, pw);
  at::Tensor xp = at::empty({x.size(0), pad.hp(), pad.wp(), pad.C}, x.options());
  float* dst = xp.data_ptr<float>();
  const int64_t row_floats = pad.wp() * pad.C, grain = std::max<int64_t>(1, 16384 / row_floats);
  at::parallel_for(0, x.size(0) * pad.hp(), grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) pad.row(r / pad.hp(), r % pad.hp(), dst + r * row_floats);
  });
  return xp;
}

// zmm per output-channel pass: C_out rounded up to 16, at most four
int vectors_for(int64_t cout) { return static_cast<int>(std::min<int64_t>(4, (cout + 15) / 16)); }

#if GK_STEM_X86
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx2,fma")

// y = act(v + bias) on one zmm of output channels, as act_forward computes it (the same bits)
template <Activation A, bool HasBias>
inline __m512 epilogue(__m512 v, __m512 bias, __m512 slope) {
  if constexpr (HasBias) v = _mm512_add_ps(v, bias);
  const __m512 zero = _mm512_setzero_ps();
  if constexpr (A == Activation::kRelu) v = _mm512_max_ps(zero, v);  // NaN and -0 pass through
  if constexpr (A == Activation::kLeakyRelu)
    v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, zero, _CMP_GT_OQ), _mm512_mul_ps(v, slope), v);
  return v;
}

// Forward: y[r * ldy + c] = act(sum_k px[r][off[k]] * w[k * kPanel + c] + bias[c]) for the first
// `rows` of R pixels (window starts px) and V * 16 channels of the packed weight w (kPanel
// columns per tap, zero past C_out), zmm v read from bias and stored through mask[v].
template <int R, int V, Activation A, bool HasBias>
void forward_tile(const float* const* px, const int64_t* off, int64_t taps, const float* w,
                  const float* bias, float slope, int rows, const __mmask16* mask, float* y,
                  int64_t ldy) {
  GK_ROWS(GK_ACC_ROW)
  for (int64_t k = 0; k < taps; ++k) {
    GK_WEIGHT_ROW(w + k * kPanel)
    const int64_t o = off[k];
#define GK_FWD(r) \
  if constexpr (R > r) GK_FMA_ROW(r, px[r][o])
    GK_ROWS(GK_FWD)
#undef GK_FWD
  }
  const __m512 sl = _mm512_set1_ps(slope);
  __m512 bv[4];
  for (int v = 0; v < V; ++v) bv[v] = HasBias ? _mm512_maskz_loadu_ps(mask[v], bias + 16 * v) : sl;
#define GK_OUT(r, v)                                     \
  if constexpr (V > v)                                   \
    _mm512_mask_storeu_ps(y + r * ldy + 16 * v, mask[v], \
                          epilogue<A, HasBias>(a##r##_##v, bv[v], sl));
#define GK_OUT_ROW(r)                                     \
  if constexpr (R > r) {                                  \
    if (r < rows) {                                       \
      GK_OUT(r, 0) GK_OUT(r, 1) GK_OUT(r, 2) GK_OUT(r, 3) \
    }                                                     \
  }
  GK_ROWS(GK_OUT_ROW)
#undef GK_OUT_ROW
#undef GK_OUT
}

// Weight gradient: out[j * ldo + c] = sum_{p < count} xs[org[p] + off[j]] * g[p * ldg + c] for R
// taps j and V * 16 channels of g (masks: the valid lanes of each zmm), and with Sums the column
// sums of g too, sums[c] = sum_p g[p * ldg + c] (the bias gradient); every sum in p order.
template <int R, int V, bool Sums>
void weight_grad_tile(const float* xs, const int64_t* org, int64_t count, const int64_t* off,
                      const float* g, int64_t ldg, const __mmask16* mask, float* out,
                      int64_t ldo, float* sums) {
  GK_ROWS(GK_ACC_ROW)
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t o[R];
  for (int j = 0; j < R; ++j) o[j] = off[j];
  for (int64_t p = 0; p < count; ++p) {
    const float* gp = g + p * ldg;
    const __m512 b0 = _mm512_maskz_loadu_ps(mask[0], gp);
    const __m512 b1 = V > 1 ? _mm512_maskz_loadu_ps(mask[1], gp + 16) : b0;
    const __m512 b2 = V > 2 ? _mm512_maskz_loadu_ps(mask[2], gp + 32) : b0;
    const __m512 b3 = V > 3 ? _mm512_maskz_loadu_ps(mask[3], gp + 48) : b0;
    if constexpr (Sums) {
      s0 = _mm512_add_ps(s0, b0);
      if constexpr (V > 1) s1 = _mm512_add_ps(s1, b1);
      if constexpr (V > 2) s2 = _mm512_add_ps(s2, b2);
      if constexpr (V > 3) s3 = _mm512_add_ps(s3, b3);
    }
    const float* xo = xs + org[p];
#define GK_WG(r) \
  if constexpr (R > r) GK_FMA_ROW(r, xo[o[r]])
    GK_ROWS(GK_WG)
#undef GK_WG
  }
  GK_ROWS(GK_STORE_ROW)
  if constexpr (Sums) {
    _mm512_mask_storeu_ps(sums, mask[0], s0);
    if constexpr (V > 1) _mm512_mask_storeu_ps(sums + 16, mask[1], s1);
    if constexpr (V > 2) _mm512_mask_storeu_ps(sums + 32, mask[2], s2);
    if constexpr (V > 3) _mm512_mask_storeu_ps(sums + 48, mask[3], s3);
  }
}

// mask[v]: the lanes of zmm v of a panel that hold one of its `channels` channels
inline void lane_masks(int64_t channels, __mmask16* mask) {
  for (int v = 0; v < 4; ++v)
    mask[v] = static_cast<__mmask16>((1u << std::clamp<int64_t>(channels - 16 * v, 0, 16)) - 1u);
}

template <Activation A, bool HasBias, int V>
void forward_all(const Stem& s, const float* xs, const float* wpacked, const float* bias,
                 float slope, float* y, bool nchw) {
  constexpr int R = tile_rows<V>();
  const std::vector<int64_t> off = s.tap_offsets();
  const int64_t taps = s.taps(), panels = s.panels();
  // tasks of about 16K multiply-adds per pixel row, so that a batch-1 layer spreads too
  const int64_t grain = std::max<int64_t>(1, 16384 / (taps * panels * R));
  for_each_pixel_tile<R>(s, xs, grain, y, nchw, [&](const float* const* px, int rows, float* out) {
    for (int64_t panel = 0; panel < panels; ++panel) {
      const int64_t c0 = panel * kPanel;
      __mmask16 mask[4];
      lane_masks(s.cout - c0, mask);
      forward_tile<R, V, A, HasBias>(px, off.data(), taps, wpacked + panel * taps * kPanel,
                                     bias + c0, slope, rows, mask, out + c0, s.cout);
    }
  });
}

// weight_grad_tile<rows, V, Sums> for 1 <= rows <= tile_rows<V>()
template <int V, bool Sums, int R = 1>
void weight_grad_rows(int rows, const float* xs, const int64_t* org, int64_t count,
                      const int64_t* off, const float* g, int64_t ldg, const __mmask16* mask,
                      float* out, int64_t ldo, float* sums) {
  if constexpr (R < tile_rows<V>()) {
    if (rows != R)
      return weight_grad_rows<V, Sums, R + 1>(rows, xs, org, count, off, g, ldg, mask, out, ldo,
                                              sums);
  }
  weight_grad_tile<R, V, Sums>(xs, org, count, off, g, ldg, mask, out, ldo, sums);
}

// One chunk's sums, out[k * width + c] for every tap k (width: C_out rounded up to kPanel) and
// at row `taps` the bias sums when need_bias, from its pixels' window origins org and g (rows of
// C_out). Kept out of line: nothing in it depends on the activation.
template <int V>
__attribute__((noinline)) void chunk_sums(const Stem& s, const float* xs, const int64_t* org,
                                          int64_t count, const int64_t* off, const float* g,
                                          bool need_bias, float* out) {
  const int64_t taps = s.taps(), panels = s.panels(), width = panels * kPanel;
  // taps in blocks of at most tile_rows<V>() rows, as even as they go (27 = 9 + 9 + 9)
  const int64_t blocks = (taps + tile_rows<V>() - 1) / tile_rows<V>();
  for (int64_t panel = 0; panel < panels; ++panel) {
    const int64_t col0 = panel * kPanel;
    __mmask16 mask[4];
    lane_masks(s.cout - col0, mask);
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t k0 = b * taps / blocks, k1 = (b + 1) * taps / blocks;
      const int tile = static_cast<int>(k1 - k0);
      float* tap_sums = out + k0 * width + col0;
      if (need_bias && b == 0)  // the bias gradient's sums ride along the first block
        weight_grad_rows<V, true>(tile, xs, org, count, off + k0, g + col0, s.cout, mask,
                                  tap_sums, width, out + taps * width + col0);
      else
        weight_grad_rows<V, false>(tile, xs, org, count, off + k0, g + col0, s.cout, mask,
                                   tap_sums, width, nullptr);
    }
  }
}

// partial: see weight_grad_chunks
template <Activation A, int V>
void weight_grad_all(const Stem& s, const Padded& pad, const float* gy, const float* saved,
                     bool nchw, float slope, bool need_bias, float* partial) {
  weight_grad_chunks<A>(s, pad, gy, saved, nchw, slope, need_bias, partial,
                        [&](const float* xs, const int64_t* org, int64_t count,
                            const int64_t* off, const float* g, float* out) {
                          chunk_sums<V>(s, xs, org, count, off, g, need_bias, out);
                        });
}

#pragma GCC pop_options
#endif  // GK_STEM_X86

// which kernels run here: the AVX-512 ones, else the AVX2 ones (stem_conv_avx2.h), else none
bool on_avx512() { return GK_STEM_X86 && avx512_kernels_enabled(); }
bool on_avx2() { return GK_STEM_X86 && !on_avx512() && avx2_kernels_enabled(); }

void check_float32(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(on_avx512() || on_avx2(), "genkern: the stem conv kernels need an AVX2 CPU");
  TORCH_CHECK(x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat,
              "genkern: the stem conv kernels take float32, but got ", x.scalar_type(), " and ",
              weight.scalar_type());
}

}  // namespace

void set_stem_conv_mode(int64_t mode) {
  set_path_mode(g_mode, mode, "stem conv");
}

int64_t stem_conv_mode() { return g_mode.load(); }

bool stem_conv_available(const at::Tensor& x, const at::Tensor& weight, int64_t groups) {
  return g_mode.load(std::memory_order_relaxed) != 0 && (on_avx512() || on_avx2()) &&
         groups == 1 && x.dim() == 4 && weight.dim() == 4 &&
         x.numel() != 0 && weight.numel() != 0 && x.scalar_type() == at::kFloat &&
         weight.scalar_type() == at::kFloat;
}

bool use_stem_conv(const at::Tensor& x, const at::Tensor& weight, int64_t groups) {
  if (!stem_conv_available(x, weight, groups)) return false;
  if (g_mode.load(std::memory_order_relaxed) == 2) return true;
  // the measured rule: few input channels and taps, in either output layout (NCHW through
  // the forward's bands and the weight gradient's chunks, see stem_conv_geometry.h)
  const int64_t taps = weight.size(1) * weight.size(2) * weight.size(3);
  return weight.size(1) <= 4 && taps <= 64;
}

bool stem_conv_lands_on(const at::Tensor& x, const at::Tensor& y, const at::Tensor& weight,
                        const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
                        const std::vector<int64_t>& dilation) {
  for (int i = 0; i < 2; ++i) {
    if (conv_output_size(x.size(i + 2), weight.size(i + 2), stride[i], padding[i],
                         dilation[i]) != y.size(i + 2))
      return false;
  }
  return true;
}

bool stem_conv_fuses(int64_t activation) {
  const auto act = static_cast<Activation>(activation);
  return act == Activation::kIdentity || act == Activation::kRelu ||
         act == Activation::kLeakyRelu;
}

at::Tensor stem_pack_weight(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 4 && weight.scalar_type() == at::kFloat,
              "genkern: the stem conv kernels take a 4-D float32 weight");
  const int64_t cout = weight.size(0), cin = weight.size(1), kh = weight.size(2),
                kw = weight.size(3), taps = cin * kh * kw, panels = (cout + kPanel - 1) / kPanel;
  at::Tensor packed = at::zeros({panels, taps, kPanel}, weight.options());
  const float* w = weight.data_ptr<float>();
  float* out = packed.data_ptr<float>();
  const auto st = weight.strides();
  for (int64_t co = 0; co < cout; ++co) {  // tap (i, j, ci) -> row (i * kw + j) * cin + ci
    float* panel = out + co / kPanel * taps * kPanel + co % kPanel;
    for (int64_t i = 0; i < kh; ++i)
      for (int64_t j = 0; j < kw; ++j)
        for (int64_t ci = 0; ci < cin; ++ci)
          panel[((i * kw + j) * cin + ci) * kPanel] =
              w[co * st[0] + ci * st[1] + i * st[2] + j * st[3]];
  }
  return packed;
}

at::Tensor stem_conv2d(const at::Tensor& x, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias, const std::vector<int64_t>& stride,
                       const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation,
                       int64_t activation, double negative_slope, const at::Tensor& packed) {
  check_float32(x, weight);
  TORCH_CHECK(stem_conv_fuses(activation),
              "genkern: the stem conv applies identity, relu or leaky_relu only");
  const auto act = static_cast<Activation>(activation);
  const Stem s = stem_of(x, weight, stride, padding, dilation);
  const auto fmt = conv_output_format(x, weight);  // written in it (see for_each_pixel_tile)
  const bool nchw = fmt == at::MemoryFormat::Contiguous;
  at::Tensor y = at::empty({s.n, s.cout, s.oh, s.ow}, x.options(), fmt);
  if (y.numel() == 0) return y;
  const at::Tensor xp = padded_nhwc(x, padding[0], padding[1]);
  const at::Tensor wpacked = packed.defined() ? packed : stem_pack_weight(weight);
  TORCH_CHECK(wpacked.numel() == s.panels() * s.taps() * kPanel,
              "genkern: the stem conv's packed weight does not fit this weight");
  const at::Tensor b =
      bias.has_value() && bias->defined() ? bias->to(at::kFloat).contiguous() : at::Tensor();
#if GK_STEM_X86
  if (on_avx2()) {
    forward_avx2(s, xp.data_ptr<float>(), wpacked.data_ptr<float>(),
                 b.defined() ? b.data_ptr<float>() : nullptr, act,
                 static_cast<float>(negative_slope), y.data_ptr<float>(), nchw);
    return y;
  }
  const auto run = [&](auto a, auto has_bias) {
    dispatch_zmm(vectors_for(s.cout), [&](auto v) {
      forward_all<decltype(a)::value, decltype(has_bias)::value, decltype(v)::value>(
          s, xp.data_ptr<float>(), wpacked.data_ptr<float>(),
          b.defined() ? b.data_ptr<float>() : nullptr, static_cast<float>(negative_slope),
          y.data_ptr<float>(), nchw);
    });
  };
  const auto with_act = [&](auto a) {
    dispatch_bool(b.defined(), [&](auto has_bias) { run(a, has_bias); });
  };
  if (act == Activation::kRelu)
    with_act(ActivationTag<Activation::kRelu>{});
  else if (act == Activation::kLeakyRelu)
    with_act(ActivationTag<Activation::kLeakyRelu>{});
  else
    with_act(ActivationTag<Activation::kIdentity>{});
#endif
  return y;
}

std::tuple<at::Tensor, at::Tensor> stem_conv2d_param_grads(
    const at::Tensor& grad_y, const std::optional<at::Tensor>& saved, const at::Tensor& x,
    const at::Tensor& weight, const std::vector<int64_t>& stride,
    const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation,
    int64_t activation, double negative_slope, bool need_bias) {
  check_float32(x, weight);
  const auto act = static_cast<Activation>(activation);
  const bool has_saved = saved.has_value() && saved->defined();
  TORCH_CHECK(has_saved || act == Activation::kIdentity,
              "genkern: activation backward needs the saved tensor");
  const Stem s = stem_of(x, weight, stride, padding, dilation);
  // in the layout ATen's (oneDNN's) backward gives it: channels_last when x or weight is
  at::Tensor grad_w = at::empty(weight.sizes(), weight.options(), conv_output_format(x, weight));
  at::Tensor grad_b = need_bias ? at::empty({s.cout}, weight.options()) : at::Tensor();
  const int64_t taps = s.taps(), M = s.pixels(), rows = taps + need_bias;
  if (M == 0) {
    if (need_bias) grad_b.zero_();
    return {grad_w.zero_(), grad_b};
  }
  // rows of C_out channels per pixel, or NCHW planes read a chunk at a time (nchw)
  at::Tensor gy = grad_y.to(at::kFloat);
  const bool nchw = gy.is_contiguous() && !gy.is_contiguous(at::MemoryFormat::ChannelsLast);
  gy = nchw ? gy : to_channels_last(gy);
  at::Tensor sv;
  if (has_saved) {
    sv = saved->to(at::kFloat);
    sv = nchw ? sv.contiguous() : to_channels_last(sv);
  }
  const Padded pad(x, padding[0], padding[1]);
  const int64_t groups = Chunking(s).groups();
  const int64_t width = s.panels() * kPanel;
  at::Tensor partial = at::empty({groups, rows, width}, x.options());
#if GK_STEM_X86
  const float* saved_ptr = has_saved ? sv.data_ptr<float>() : nullptr;
  const auto slope = static_cast<float>(negative_slope);
  if (on_avx2()) {
    weight_grad_avx2(s, pad, gy.data_ptr<float>(), saved_ptr, nchw, act, slope, need_bias,
                     partial.data_ptr<float>());
  } else {
    dispatch_activation(act, [&](auto a) {
      dispatch_zmm(vectors_for(s.cout), [&](auto v) {
        weight_grad_all<decltype(a)::value, decltype(v)::value>(
            s, pad, gy.data_ptr<float>(), saved_ptr, nchw, slope, need_bias,
            partial.data_ptr<float>());
      });
    });
  }
#endif
  // each row's group sums added in group order (in double); row k < taps is tap
  // k = (i * kw + j) * cin + ci of grad_w[:, ci, i, j], row `taps` the bias gradient
  const float* part = partial.data_ptr<float>();
  float* w_out = grad_w.data_ptr<float>();
  float* b_out = need_bias ? grad_b.data_ptr<float>() : nullptr;
  const auto st = grad_w.strides();
  at::parallel_for(0, rows, 1, [&](int64_t k0, int64_t k1) {
    std::vector<double> sum(s.cout);
    for (int64_t k = k0; k < k1; ++k) {
      std::fill(sum.begin(), sum.end(), 0.0);
      for (int64_t c = 0; c < groups; ++c) {
        const float* row = part + (c * rows + k) * width;
        for (int64_t co = 0; co < s.cout; ++co) sum[co] += row[co];
      }
      if (k == taps) {
        for (int64_t co = 0; co < s.cout; ++co) b_out[co] = static_cast<float>(sum[co]);
        continue;
      }
      const int64_t ci = k % s.cin, j = k / s.cin % s.kw, i = k / s.cin / s.kw;
      for (int64_t co = 0; co < s.cout; ++co)
        w_out[co * st[0] + ci * st[1] + i * st[2] + j * st[3]] = static_cast<float>(sum[co]);
    }
  });
  return {grad_w, grad_b};
}

}  // namespace genkern::cpu
