#include "pool.h"


#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu_clones.h"
#include "dispatch_bool.h"
#include "epilogue.h"
#include "layout_copy.h"
#include "pool_2x2_groups.h"
#include "pool_2x2_rows.h"
#include "genkern/activation.h"

namespace genkern::cpu {
namespace {

// The channels_last loops over a pixel's C channels, as functions of their own so that they get
// the AVX-512 / AVX2 clones (the rest of the file is baseline code: 4 floats a vector).

// One output pixel of a channels_last max pool over its k window taps (rows of C): y[c] the max
// (NaN wins, as torch) and, when I, index[c] the flat input index of the tap it came from (-inf
// and -1 for a window wholly in the padding). Channels in blocks whose running max and tap (an
// int32, as wide as a float: the select vectorizes) stay in L1 over the taps.
// With `code` given (and I), code[c] gets the tap's number in the window instead (a uint8: see
// max_pool2d_forward_tap_codes_cpu).
template <Activation A, bool I, typename scalar_t, typename opmath_t>
GK_CPU_CLONES void max_pixel(const scalar_t* const* taps, const int64_t* __restrict__ tap_index,
                             int32_t k, int64_t C, opmath_t slope, scalar_t* __restrict__ y,
                             int64_t* __restrict__ index, uint8_t* __restrict__ code) {
  constexpr int64_t kBlock = 64;
  opmath_t b[kBlock];
  int32_t t[kBlock];
  if (k == 0) {  // a window wholly in the padding
    const scalar_t lowest = scalar_t(
        act_forward<A, opmath_t>(-std::numeric_limits<opmath_t>::infinity(), slope));
    for (int64_t c = 0; c < C; ++c) y[c] = lowest;
    if constexpr (I) {
      if (code)
        std::fill(code, code + C, uint8_t(255));  // no tap
      else
        std::fill(index, index + C, int64_t(-1));
    }
    return;
  }
  for (int64_t c0 = 0; c0 < C; c0 += kBlock) {
    const int64_t n = std::min(kBlock, C - c0);
    scalar_t* __restrict__ yb = y + c0;
    const scalar_t* __restrict__ p0 = taps[0] + c0;
    if (k == 1) {
      for (int64_t c = 0; c < n; ++c) yb[c] = scalar_t(act_forward<A, opmath_t>(p0[c], slope));
      if constexpr (I)
        for (int64_t c = 0; c < n; ++c) t[c] = 0;
    } else {
      // b: the max of taps [0, k - 1), from tap 0 rather than -inf (the same: a -inf or NaN first
      // tap is kept by both rules); the last tap's select goes straight to y. Taps 0 and 1 share
      // a pass: a fill, a copy into b and one out of it became rep stos / movs, 20% of a
      // channels_last pool of 32 channels.
      if (k == 2) {
        for (int64_t c = 0; c < n; ++c) b[c] = opmath_t(p0[c]);
        if constexpr (I)
          for (int64_t c = 0; c < n; ++c) t[c] = 0;
      } else {
        const scalar_t* __restrict__ p1 = taps[1] + c0;
        for (int64_t c = 0; c < n; ++c) {
          const opmath_t u = opmath_t(p0[c]), v = opmath_t(p1[c]);
          const bool take = (v > u) || (v != v);
          b[c] = take ? v : u;
          if constexpr (I) t[c] = take ? 1 : 0;
        }
      }
      for (int32_t j = 2; j < k - 1; ++j) {
        const scalar_t* __restrict__ px = taps[j] + c0;
        for (int64_t c = 0; c < n; ++c) {
          const opmath_t v = opmath_t(px[c]);
          const bool take = (v > b[c]) || (v != v);
          b[c] = take ? v : b[c];
          if constexpr (I) t[c] = take ? j : t[c];
        }
      }
      const scalar_t* __restrict__ pk = taps[k - 1] + c0;
      for (int64_t c = 0; c < n; ++c) {
        const opmath_t v = opmath_t(pk[c]);
        const bool take = (v > b[c]) || (v != v);
        yb[c] = scalar_t(act_forward<A, opmath_t>(take ? v : b[c], slope));
        if constexpr (I) t[c] = take ? k - 1 : t[c];
      }
    }
    if constexpr (I) {
      if (code)
        for (int64_t c = 0; c < n; ++c) code[c0 + c] = static_cast<uint8_t>(t[c]);
      else
        for (int64_t c = 0; c < n; ++c) index[c0 + c] = tap_index[t[c]];
    }
  }
}

// d[c] = g[c] where index[c] == tap, over a channels_last pixel (max pool's backward: the channels
// whose maximum this window tap holds; a select, where a scatter by index would not vectorize).
template <typename scalar_t>
GK_CPU_CLONES void take_at_tap(scalar_t* __restrict__ d, const int64_t* __restrict__ index,
                               int64_t tap, const scalar_t* __restrict__ g, int64_t C) {
  for (int64_t c = 0; c < C; ++c) d[c] = index[c] == tap ? g[c] : d[c];
}

// The same from tap numbers in the window (max_pool2d_forward_tap_codes_cpu's codes).
template <typename scalar_t>
GK_CPU_CLONES void take_at_code(scalar_t* __restrict__ d, const uint8_t* __restrict__ code,
                                uint8_t tap, const scalar_t* __restrict__ g, int64_t C) {
  for (int64_t c = 0; c < C; ++c) d[c] = code[c] == tap ? g[c] : d[c];
}

// Rows [r0, r1) of a 2-wide tiled average pool's NCHW input gradient (rows of IW, IH a plane;
// kH input rows per output row): d[2 i] = d[2 i + 1] = 0 + g[i] / div, as the general loop adds
// it into zeros (-0 becomes +0 there too), and zeros past the windows. One call per range, not
// per row (a clone's call per 16-float row: 128x64x16x16, 2 threads, 956 -> ~600 us).
template <typename scalar_t, typename opmath_t>
GK_CPU_CLONES void divided_pair_rows(const scalar_t* __restrict__ g, scalar_t* __restrict__ out,
                                     int64_t r0, int64_t r1, int64_t IH, int64_t IW, int64_t OH,
                                     int64_t OW, int64_t kH, opmath_t div) {
  int64_t p = r0 / IH, ih = r0 % IH;
  for (int64_t r = r0; r < r1; ++r) {
    scalar_t* d = out + r * IW;
    int64_t j = 0;
    if (ih < OH * kH) {
      const scalar_t* gr = g + (p * OH + ih / kH) * OW;
      for (int64_t i = 0; i < OW; ++i)
        d[2 * i] = d[2 * i + 1] = scalar_t(opmath_t(0) + opmath_t(gr[i]) / div);
      j = 2 * OW;
    }
    for (; j < IW; ++j) d[j] = scalar_t(0);
    if (++ih == IH) {
      ih = 0;
      ++p;
    }
  }
}

// d[c] += g[c] / div over a channels_last pixel (avg pool's backward, one window tap).
template <typename scalar_t, typename opmath_t>
GK_CPU_CLONES void add_divided(scalar_t* __restrict__ d, const scalar_t* __restrict__ g,
                               opmath_t div, int64_t C) {
  for (int64_t c = 0; c < C; ++c) d[c] = scalar_t(opmath_t(d[c]) + opmath_t(g[c]) / div);
}

bool channels_last(const at::Tensor& t) {
  return !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

at::MemoryFormat format_of(const at::Tensor& t) {
  return channels_last(t) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// Grain in elements of work per task (planes or pixels are scaled to it).
constexpr int64_t kGrain = 16384;

int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, kGrain / std::max<int64_t>(work_per_item, 1));
}

// Output rows [row0, row1) of the 2x2 / 2 pool of one NCHW plane: y = act(max) and (when I) idx
// the flat input index of the max, torch's tap order, NaN wins; each row's taps found branch-free
// as an offset from the window's corner (0, 1, IW, IW + 1, in t: as wide as a float, so the select
// vectorizes in the clones), then widened to the index. W outputs are computed per row, OW apart:
// W > OW (max_pool_rows_2x2_padded) reads and writes past each row's end into the next row's,
// which that row then overwrites.
template <Activation A, bool I, typename scalar_t, typename opmath_t>
__attribute__((always_inline)) inline void max_pool_rows_2x2(
    const scalar_t* __restrict__ plane, scalar_t* __restrict__ y, int64_t* __restrict__ idx,
    int32_t* __restrict__ t, int64_t row0, int64_t row1, int64_t OW, int64_t IW, opmath_t slope,
    int64_t W) {
  const int32_t iw1 = int32_t(IW), iw2 = int32_t(IW + 1);
  for (int64_t oh = row0; oh < row1; ++oh) {
    const scalar_t* r0 = plane + oh * 2 * IW;
    const scalar_t* r1 = r0 + IW;
    scalar_t* yr = y + oh * OW;
#pragma GCC unroll 1  // a W of 8 is one vector: unrolled first, the loop stayed scalar
    for (int64_t ow = 0; ow < W; ++ow) {
      opmath_t best = opmath_t(r0[2 * ow]);
      int32_t k = 0;
      opmath_t v = opmath_t(r0[2 * ow + 1]);
      bool take = (v > best) | (v != v);
      best = take ? v : best;
      k = take ? 1 : k;
      v = opmath_t(r1[2 * ow]);
      take = (v > best) | (v != v);
      best = take ? v : best;
      k = take ? iw1 : k;
      v = opmath_t(r1[2 * ow + 1]);
      take = (v > best) | (v != v);
      best = take ? v : best;
      k = take ? iw2 : k;
      yr[ow] = scalar_t(act_forward<A, opmath_t>(best, slope));
      if constexpr (I) t[ow] = k;
    }
    if constexpr (I) {
      const int64_t base = oh * 2 * IW;
      int64_t* ir = idx + oh * OW;
#pragma GCC unroll 1
      for (int64_t ow = 0; ow < W; ++ow) ir[ow] = base + 2 * ow + int64_t(t[ow]);
    }
  }
}

// (Where pool_2x2_groups_take, float32 whole-tile planes of rows up to 16 run there instead.)
// max_pool_rows_2x2 in the AVX2 / AVX-512 clones: for rows of 16 outputs or more (on shorter
// ones the 8- and 16-wide loops leave most of a row to their scalar tails and the 4-wide baseline
// loop wins: the autoencoder's 7-wide rows took 4.3 ms in the clones, 2.5 inline)
template <Activation A, bool I, typename scalar_t, typename opmath_t>
GK_CPU_CLONES void max_pool_rows_2x2_wide(const scalar_t* __restrict__ plane,
                                          scalar_t* __restrict__ y, int64_t* __restrict__ idx,
                                          int32_t* __restrict__ t, int64_t rows, int64_t OW,
                                          int64_t IW, opmath_t slope) {
  max_pool_rows_2x2<A, I, scalar_t, opmath_t>(plane, y, idx, t, 0, rows, OW, IW, slope, OW);
}

// Rows of 5 to 7 outputs (the autoencoder's 14x14 planes: 7) as 8 each, one 8-wide vector in the
// AVX2 clone, no scalar tail: each row's 8th output (and its inputs, two past the row) belong to
// the next row, rewritten when it comes. So not the plane's last row: rows < OH - 1 only, with
// IW >= 2 OW >= 10 (the reads end within the plane). 256x64x14x14, 2 threads, Zen 1: forward
// 2.02 -> 0.95 ms, with indices 2.55 -> 1.41, forward + backward 5.07 -> 3.70; 10x10 planes
// (5 a row) 1.27 -> 0.62 forward. Rows of 8 stay in the 4-wide loop (two vectors, no tail: 442 us
// there, 655 8-wide, 128x64x16x16).
constexpr int64_t kPaddedRow = 8;
template <Activation A, bool I, typename scalar_t, typename opmath_t>
GK_CPU_CLONES void max_pool_rows_2x2_padded(const scalar_t* __restrict__ plane,
                                            scalar_t* __restrict__ y, int64_t* __restrict__ idx,
                                            int32_t* __restrict__ t, int64_t rows, int64_t OW,
                                            int64_t IW, opmath_t slope) {
  max_pool_rows_2x2<A, I, scalar_t, opmath_t>(plane, y, idx, t, 0, rows, OW, IW, slope,
                                              kPaddedRow);
}

// The activations the max pool applies as it stores each value: those with a select for a
// forward (any other runs as one vectorized pass after the pool).
bool stores_activation(Activation act) {
  return act == Activation::kIdentity || act == Activation::kRelu ||
         act == Activation::kLeakyRelu;
}

template <typename F>
void dispatch_store_activation(Activation act, F&& f) {
  if (act == Activation::kRelu) return f(ActivationTag<Activation::kRelu>{});
  if (act == Activation::kLeakyRelu) return f(ActivationTag<Activation::kLeakyRelu>{});
  f(ActivationTag<Activation::kIdentity>{});
}

// What a max pool records of each maximum: nothing, the flat input index (torch's), or the tap's
// number in its window (channels_last, windows that do not overlap: a uint8).
enum class Indices { kNone, kFlat, kTapCodes };

// Windows that do not overlap (no padding or dilation, kernel <= stride): each input element lies
// in at most one window.
bool tiled_windows(const std::vector<int64_t>& kernel, const std::vector<int64_t>& stride,
                   const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation) {
  return padding[0] == 0 && padding[1] == 0 && dilation[0] == 1 && dilation[1] == 1 &&
         kernel[0] <= stride[0] && kernel[1] <= stride[1];
}

// 2x2 windows at stride 2 that tile the whole plane (IH == 2 OH, IW == 2 OW): what the NCHW 2x2
// row and group kernels take.
bool whole_2x2_tiles(const std::vector<int64_t>& kernel, const std::vector<int64_t>& stride,
                     const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation,
                     int64_t IH, int64_t IW, int64_t OH, int64_t OW) {
  return tiled_windows(kernel, stride, padding, dilation) && kernel[0] == 2 && kernel[1] == 2 &&
         stride[0] == 2 && stride[1] == 2 && IH == 2 * OH && IW == 2 * OW;
}

// The refusal of the forward and the backward asked for tap codes where they do not apply.
constexpr const char* kTapCodesNeed =
    "genkern: max_pool2d tap codes need channels_last and windows that do not overlap";

// The pool with an activation A applied as each value is stored (identity, relu or leaky_relu,
// whose backward needs only the output: the cheap ones; the others run as a pass after). Without
// with_indices, a float or double pool tracks no index and idx is empty (an inference pool writes
// 4 bytes per float output instead of 12); the 16-bit types, which only the custom op calls, keep
// them (one build of the loops less).
std::tuple<at::Tensor, at::Tensor> max_pool2d_act(const at::Tensor& x,
                                                  const std::vector<int64_t>& kernel,
                                                  const std::vector<int64_t>& stride,
                                                  const std::vector<int64_t>& padding,
                                                  const std::vector<int64_t>& dilation,
                                                  const std::vector<int64_t>& out_size,
                                                  Activation act, double negative_slope,
                                                  Indices kind) {
  const int64_t N = x.size(0), C = x.size(1), IH = x.size(2), IW = x.size(3);
  const int64_t OH = out_size[0], OW = out_size[1];
  const int64_t kH = kernel[0], kW = kernel[1], sH = stride[0], sW = stride[1];
  const int64_t pH = padding[0], pW = padding[1], dH = dilation[0], dW = dilation[1];
  const auto fmt = format_of(x);
  at::Tensor y = at::empty({N, C, OH, OW}, x.options().memory_format(fmt));
  const auto dtype = x.scalar_type();
  if (kind == Indices::kNone && !(dtype == at::kFloat || dtype == at::kDouble))
    kind = Indices::kFlat;
  const bool with_indices = kind != Indices::kNone;
  const auto index_type = kind == Indices::kTapCodes ? at::kByte : at::kLong;
  at::Tensor idx =
      with_indices ? at::empty({N, C, OH, OW}, x.options().dtype(index_type).memory_format(fmt))
                   : at::empty({0}, x.options().dtype(at::kLong));
  if (y.numel() == 0) return {y, idx};
  // float32 planes of whole 2x2 / 2 windows, rows of 1-16 windows: 16 windows a vector
  const bool groups = fmt == at::MemoryFormat::Contiguous && dtype == at::kFloat &&
                      kind != Indices::kTapCodes &&
                      whole_2x2_tiles(kernel, stride, padding, dilation, IH, IW, OH, OW) &&
                      pool_2x2_groups_take(OH, OW);
  if (groups) {
    const float* xp = x.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    int64_t* ip = with_indices ? idx.data_ptr<int64_t>() : nullptr;
    const int64_t count = pool_2x2_group_count(N * C, OH, OW);
    const int64_t windows = pool_2x2_group_rows(OW) * OW;
    at::parallel_for(0, count, grain_for(4 * windows), [&](int64_t g0, int64_t g1) {
      const int64_t r = pool_2x2_group_first_row(g0, OH, OW);
      max_pool_2x2_forward_groups(xp + 4 * OW * r, yp + OW * r, ip ? ip + OW * r : nullptr, g0,
                                  g1, OH, OW, act, float(negative_slope));
    });
    return {y, idx};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "max_pool2d", [&] {
   dispatch_store_activation(act, [&](auto tag) {
   dispatch_bool(with_indices, [&](auto keep_indices) {
    constexpr Activation A = decltype(tag)::value;
    constexpr bool I = decltype(keep_indices)::value;
    if constexpr (!I && sizeof(scalar_t) < 4) {
      return;  // unreachable (see with_indices above): no code for it
    } else {
    using opmath_t = at::opmath_type<scalar_t>;
    const opmath_t slope = static_cast<opmath_t>(negative_slope);
    const auto out = [slope](opmath_t v) { return scalar_t(act_forward<A, opmath_t>(v, slope)); };
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    const bool codes = kind == Indices::kTapCodes;
    int64_t* ip = I && !codes ? idx.data_ptr<int64_t>() : nullptr;
    uint8_t* cp = codes ? idx.data_ptr<uint8_t>() : nullptr;
    if (fmt == at::MemoryFormat::Contiguous) {
      const bool simple = pH == 0 && pW == 0 && dH == 1 && dW == 1 && kH == 2 && kW == 2;
      const bool s2 = simple && sH == 2 && sW == 2;
      at::parallel_for(0, N * C, grain_for(OH * OW * kH * kW), [&](int64_t p0, int64_t p1) {
        std::vector<int32_t> tap(std::max(OW, kPaddedRow));
        for (int64_t p = p0; p < p1; ++p) {
          const scalar_t* plane = xp + p * IH * IW;
          scalar_t* yo = yp + p * OH * OW;
          int64_t* io = I ? ip + p * OH * OW : nullptr;
          // the CNNs' 2x2 / 2 pool: the rows whose windows lie inside, in one call
          const int64_t fast_rows = s2 && OW * 2 <= IW ? std::min(OH, IH / 2) : 0;
          // rows of 5-7 outputs: all but the plane's last 8 wide (that one in the plain loop)
          const int64_t padded_rows =
              OW > 4 && OW < kPaddedRow ? std::min(fast_rows, OH - 1) : 0;
          if (padded_rows > 0)
            max_pool_rows_2x2_padded<A, I, scalar_t, opmath_t>(plane, yo, io, tap.data(),
                                                               padded_rows, OW, IW, slope);
          if (fast_rows > 0 && OW >= 16)
            max_pool_rows_2x2_wide<A, I, scalar_t, opmath_t>(plane, yo, io, tap.data(),
                                                             fast_rows, OW, IW, slope);
          else if (fast_rows > padded_rows)
            max_pool_rows_2x2<A, I, scalar_t, opmath_t>(plane, yo, io, tap.data(), padded_rows,
                                                        fast_rows, OW, IW, slope, OW);
          for (int64_t oh = fast_rows; oh < OH; ++oh) {
            if (simple && (oh * sH + 1) < IH && ((OW - 1) * sW + 1) < IW) {
              // 2x2 window wholly inside: the four taps in torch's order, no bounds logic
              const int64_t ih = oh * sH;
              const scalar_t* r0 = plane + ih * IW;
              const scalar_t* r1 = r0 + IW;
              for (int64_t ow = 0; ow < OW; ++ow) {
                const int64_t iw = ow * sW;
                opmath_t best = opmath_t(r0[iw]);
                int64_t bi = ih * IW + iw;
                opmath_t v = opmath_t(r0[iw + 1]);
                bool take = (v > best) || std::isnan(v);
                best = take ? v : best;
                bi = take ? bi + 1 : bi;
                v = opmath_t(r1[iw]);
                take = (v > best) || std::isnan(v);
                best = take ? v : best;
                bi = take ? (ih + 1) * IW + iw : bi;
                v = opmath_t(r1[iw + 1]);
                take = (v > best) || std::isnan(v);
                best = take ? v : best;
                bi = take ? (ih + 1) * IW + iw + 1 : bi;
                // the first tap vs torch's -inf start: a NaN first tap is kept by both rules
                yo[oh * OW + ow] = out(best);
                if constexpr (I) io[oh * OW + ow] = bi;
              }
              continue;
            }
            for (int64_t ow = 0; ow < OW; ++ow) {
              int64_t h0 = oh * sH - pH, w0 = ow * sW - pW;
              const int64_t h1 = std::min(h0 + (kH - 1) * dH + 1, IH);
              const int64_t w1 = std::min(w0 + (kW - 1) * dW + 1, IW);
              while (h0 < 0) h0 += dH;
              while (w0 < 0) w0 += dW;
              // a window wholly in the padding (possible with dilation): -inf and index -1
              // (torch gives an index past the plane, whose backward writes out of bounds)
              int64_t bi = (h0 < h1 && w0 < w1) ? h0 * IW + w0 : -1;
              opmath_t best = -std::numeric_limits<opmath_t>::infinity();
              for (int64_t ih = h0; ih < h1; ih += dH)
                for (int64_t iw = w0; iw < w1; iw += dW) {
                  const int64_t i = ih * IW + iw;
                  const opmath_t v = opmath_t(plane[i]);
                  if ((v > best) || std::isnan(v)) {
                    best = v;
                    bi = i;
                  }
                }
              yo[oh * OW + ow] = out(best);
              if constexpr (I) io[oh * OW + ow] = bi;
            }
          }
        }
      });
    } else {  // channels_last: per output pixel, a vector over channels
      // The running max and the tap it came from (an int32, as wide as a float: the select
      // vectorizes), turned into the flat input index once per pixel.
      at::parallel_for(0, N * OH * OW, grain_for(C * kH * kW), [&](int64_t q0, int64_t q1) {
        std::vector<const scalar_t*> taps(kH * kW);
        std::vector<int64_t> tap_index(kH * kW);  // tap -> flat input index, per pixel
        for (int64_t q = q0; q < q1; ++q) {
          const int64_t n = q / (OH * OW), oh = (q / OW) % OH, ow = q % OW;
          int64_t h0 = oh * sH - pH, w0 = ow * sW - pW;
          const int64_t h1 = std::min(h0 + (kH - 1) * dH + 1, IH);
          const int64_t w1 = std::min(w0 + (kW - 1) * dW + 1, IW);
          while (h0 < 0) h0 += dH;
          while (w0 < 0) w0 += dW;
          int32_t k = 0;
          for (int64_t ih = h0; ih < h1; ih += dH)
            for (int64_t iw = w0; iw < w1; iw += dW, ++k) {
              tap_index[k] = ih * IW + iw;
              taps[k] = xp + (n * IH * IW + ih * IW + iw) * C;
            }
          max_pixel<A, I, scalar_t, opmath_t>(taps.data(), tap_index.data(), k, C, slope,
                                              yp + q * C, ip ? ip + q * C : nullptr,
                                              cp ? cp + q * C : nullptr);
        }
      });
    }
    }
   });
   });
  });
  return {y, idx};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> max_pool2d_forward_cpu(
    const at::Tensor& x, std::vector<int64_t> kernel, std::vector<int64_t> stride,
    std::vector<int64_t> padding, std::vector<int64_t> dilation, std::vector<int64_t> out_size,
    int64_t activation, double negative_slope, bool save_preact) {
  return max_pool2d_forward_opt_indices_cpu(x, kernel, stride, padding, dilation, out_size,
                                            activation, negative_slope, save_preact, true);
}

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> max_pool2d_forward_recording(
    const at::Tensor& x, const std::vector<int64_t>& kernel, const std::vector<int64_t>& stride,
    const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation,
    const std::vector<int64_t>& out_size, int64_t activation, double negative_slope,
    bool save_preact, Indices kind) {
  const auto act = static_cast<Activation>(activation);
  if (!save_preact && stores_activation(act)) {
    auto [y, idx] = max_pool2d_act(x, kernel, stride, padding, dilation, out_size, act,
                                   negative_slope, kind);
    return {y, idx, at::Tensor()};
  }
  // a pass of the activation over the pooled output (a quarter of the input for 2x2 pools)
  auto [z, idx] = max_pool2d_act(x, kernel, stride, padding, dilation, out_size,
                                 Activation::kIdentity, 0.0, kind);
  auto [y, preact] = activation_epilogue(z, activation, negative_slope, save_preact);
  return {y, idx, preact};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> max_pool2d_forward_opt_indices_cpu(
    const at::Tensor& x, const std::vector<int64_t>& kernel, const std::vector<int64_t>& stride,
    const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation,
    const std::vector<int64_t>& out_size, int64_t activation, double negative_slope,
    bool save_preact, bool with_indices) {
  return max_pool2d_forward_recording(x, kernel, stride, padding, dilation, out_size, activation,
                                      negative_slope, save_preact,
                                      with_indices ? Indices::kFlat : Indices::kNone);
}

bool max_pool2d_takes_tap_codes(const at::Tensor& x, const std::vector<int64_t>& kernel,
                                const std::vector<int64_t>& stride,
                                const std::vector<int64_t>& padding,
                                const std::vector<int64_t>& dilation) {
  return x.dim() == 4 && channels_last(x) && kernel[0] * kernel[1] <= 255 &&
         tiled_windows(kernel, stride, padding, dilation);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> max_pool2d_forward_tap_codes_cpu(
    const at::Tensor& x, const std::vector<int64_t>& kernel, const std::vector<int64_t>& stride,
    const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation,
    const std::vector<int64_t>& out_size, int64_t activation, double negative_slope,
    bool save_preact) {
  TORCH_CHECK(max_pool2d_takes_tap_codes(x, kernel, stride, padding, dilation), kTapCodesNeed);
  return max_pool2d_forward_recording(x, kernel, stride, padding, dilation, out_size, activation,
                                      negative_slope, save_preact, Indices::kTapCodes);
}

at::Tensor max_pool2d_backward_cpu(const at::Tensor& grad_y, const std::optional<at::Tensor>& saved,
                                   const at::Tensor& indices, const at::Tensor& grad_input,
                                   std::vector<int64_t> kernel, std::vector<int64_t> stride,
                                   std::vector<int64_t> padding, std::vector<int64_t> dilation,
                                   int64_t activation, double negative_slope) {
  const auto act = static_cast<Activation>(activation);
  // (an empty one, kept by a forward that read no gradient coming, crashed: found by a fuzz)
  TORCH_CHECK(act == Activation::kIdentity ||
                  (saved && saved->defined() && saved->sizes() == grad_y.sizes()),
              "genkern: max_pool2d's activation backward needs the saved tensor");
  const auto fmt = format_of(grad_input);
  const at::Tensor& x = grad_input;
  const int64_t N = x.size(0), C = x.size(1), IH = x.size(2), IW = x.size(3);
  const at::Tensor gy = contiguous_as(grad_y, fmt);
  const at::Tensor id = indices.contiguous(fmt);
  // the activation's output or input at each pooled output, read beside grad_y
  const at::Tensor sv = act == Activation::kIdentity ? gy : contiguous_as(*saved, fmt);
  const int64_t OH = gy.size(2), OW = gy.size(3), OHW = OH * OW;
  at::Tensor gx = grad_input;  // uninitialized: every element is written below
  if (gx.numel() == 0) return gx;
  const int64_t kH = kernel[0], kW = kernel[1], sH = stride[0], sW = stride[1];
  // Windows that do not overlap (no padding or dilation, kernel <= stride): each input element
  // lies in at most one window, so each band of input rows under a row of windows is zeroed and
  // then receives its windows' gradients while in cache (one pass over memory instead of a zero
  // fill and a scatter); the same bits as the scatter-add into zeros.
  const bool tiled = tiled_windows(kernel, stride, padding, dilation) && gy.numel() > 0;
  const bool codes = indices.scalar_type() == at::kByte;  // tap numbers, not flat indices
  TORCH_CHECK(!codes || (tiled && fmt == at::MemoryFormat::ChannelsLast), kTapCodesNeed);
  if (!tiled) {
    gx.zero_();
    if (gy.numel() == 0) return gx;
  }
  const bool rows_2x2 = tiled && !codes && fmt == at::MemoryFormat::Contiguous &&
                        x.scalar_type() == at::kFloat &&
                        whole_2x2_tiles(kernel, stride, padding, dilation, IH, IW, OH, OW) &&
                        pool_2x2_rows_enabled();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "max_pool2d_bwd", [&] {
   dispatch_activation(act, [&](auto tag) {
    constexpr Activation A = decltype(tag)::value;
    using opmath_t = at::opmath_type<scalar_t>;
    const opmath_t slope = static_cast<opmath_t>(negative_slope);
    const scalar_t* g = gy.data_ptr<scalar_t>();
    const scalar_t* sp = sv.data_ptr<scalar_t>();
    // act_backward(grad_y, saved) at pooled output i, rounded as a stored gradient would be
    const auto grad_at = [slope, g, sp](int64_t i) -> opmath_t {
      if constexpr (A == Activation::kIdentity) return opmath_t(g[i]);
      return opmath_t(scalar_t(act_backward<A, opmath_t>(opmath_t(g[i]), opmath_t(sp[i]), slope)));
    };
    const int64_t* ip = codes ? nullptr : id.data_ptr<int64_t>();
    const uint8_t* cp = codes ? id.data_ptr<uint8_t>() : nullptr;
    scalar_t* out = gx.data_ptr<scalar_t>();
    // band oh: input rows [oh * sH, min(oh * sH + sH, IH)), which only windows of row oh reach;
    // rows from OH * sH on are in no window (zeroed with the last band)
    if (std::is_same_v<scalar_t, float> && rows_2x2 && pool_2x2_groups_take(OH, OW)) {
      const int64_t count = pool_2x2_group_count(N * C, OH, OW);
      const int64_t windows = pool_2x2_group_rows(OW) * OW;
      at::parallel_for(0, count, grain_for(4 * windows), [&](int64_t g0, int64_t g1) {
        const int64_t o0 = OW * pool_2x2_group_first_row(g0, OH, OW);
        const int64_t o1 = OW * pool_2x2_group_first_row(g1, OH, OW);  // g1 = count: the end
        const float* gg = reinterpret_cast<const float*>(g) + o0;
        const float* sg = reinterpret_cast<const float*>(sp) + o0;  // gy itself for identity
        std::vector<float> act_grads;  // act_backward's, where the kernel does not take it
        Activation fused = A;
        if (!max_pool_2x2_groups_fuse_backward(A)) {
          act_grads.resize(o1 - o0);
          for (int64_t i = 0; i < o1 - o0; ++i) act_grads[i] = grad_at(o0 + i);
          gg = act_grads.data();
          fused = Activation::kIdentity;
        }
        max_pool_2x2_backward_groups(gg, sg, ip + o0, reinterpret_cast<float*>(out) + 4 * o0, g0,
                                     g1, OH, OW, fused, float(slope));
      });
    } else if (std::is_same_v<scalar_t, float> && rows_2x2) {  // 16 windows a vector
      at::parallel_for(0, N * C * OH, grain_for(2 * IW), [&](int64_t r0, int64_t r1) {
        const float* gr = reinterpret_cast<const float*>(g) + r0 * OW;
        std::vector<float> act_grads;  // act_backward's, where there is an activation
        if constexpr (A != Activation::kIdentity) {
          act_grads.resize((r1 - r0) * OW);
          for (int64_t i = 0; i < (r1 - r0) * OW; ++i) act_grads[i] = grad_at(r0 * OW + i);
          gr = act_grads.data();
        }
        max_pool_2x2_backward_rows(gr, ip + r0 * OW, reinterpret_cast<float*>(out) + r0 * 2 * IW,
                                   r1 - r0, r0 % OH, OH, OW);
      });
    } else if (tiled && fmt == at::MemoryFormat::Contiguous) {
      at::parallel_for(0, N * C * OH, grain_for(sH * IW), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t p = r / OH, oh = r % OH, h0 = oh * sH, h1 = std::min(h0 + sH, IH);
          scalar_t* plane = out + p * IH * IW;
          std::fill(plane + h0 * IW, plane + h1 * IW, scalar_t(0));
          if (oh == OH - 1) std::fill(plane + h1 * IW, plane + IH * IW, scalar_t(0));
          const int64_t o0 = p * OHW + oh * OW;
          const int64_t* pi = ip + o0;
          for (int64_t ow = 0; ow < OW; ++ow)
            plane[pi[ow]] = scalar_t(grad_at(o0 + ow) + opmath_t(0));  // -0 -> +0, as 0 + g
        }
      });
    } else if (tiled) {  // channels_last: a band is IW * C contiguous elements a row
      at::parallel_for(0, N * OH, grain_for(sH * IW * C), [&](int64_t r0, int64_t r1) {
        std::vector<scalar_t> gw(C);  // one window's gradients
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t n = r / OH, oh = r % OH, h0 = oh * sH, h1 = std::min(h0 + sH, IH);
          scalar_t* img = out + n * IH * IW * C;
          std::fill(img + h0 * IW * C, img + h1 * IW * C, scalar_t(0));
          if (oh == OH - 1) std::fill(img + h1 * IW * C, img + IH * IW * C, scalar_t(0));
          for (int64_t ow = 0; ow < OW; ++ow) {
            const int64_t o0 = ((n * OH + oh) * OW + ow) * C;
            for (int64_t c = 0; c < C; ++c) gw[c] = scalar_t(grad_at(o0 + c) + opmath_t(0));
            // each tap of the window takes the channels whose maximum it holds (taps numbered
            // in this order, as the forward's codes)
            uint8_t tap = 0;
            for (int64_t ih = h0; ih < std::min(h0 + kH, IH); ++ih)
              for (int64_t iw = ow * sW; iw < std::min(ow * sW + kW, IW); ++iw, ++tap) {
                scalar_t* d = img + (ih * IW + iw) * C;
                if (cp)
                  take_at_code(d, cp + o0, tap, gw.data(), C);
                else
                  take_at_tap(d, ip + o0, ih * IW + iw, gw.data(), C);
              }
          }
        }
      });
    } else if (fmt == at::MemoryFormat::Contiguous) {
      at::parallel_for(0, N * C, grain_for(OHW), [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p) {
          scalar_t* plane = out + p * IH * IW;
          const int64_t* pi = ip + p * OHW;
          for (int64_t o = 0; o < OHW; ++o)
            if (pi[o] >= 0 && pi[o] < IH * IW)  // -1: a window wholly in the padding
              plane[pi[o]] = scalar_t(opmath_t(plane[pi[o]]) + grad_at(p * OHW + o));
        }
      });
    } else {  // per image and channel block, pixels in order: deterministic
      at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) {
          scalar_t* img = out + n * IH * IW * C;
          for (int64_t o = 0; o < OHW; ++o) {
            const int64_t o0 = (n * OHW + o) * C;
            const int64_t* pi = ip + o0;
            for (int64_t c = 0; c < C; ++c) {
              if (pi[c] < 0 || pi[c] >= IH * IW) continue;  // -1: a window wholly in padding
              scalar_t* dst = img + pi[c] * C + c;
              *dst = scalar_t(opmath_t(*dst) + grad_at(o0 + c));
            }
          }
        }
      });
    }
   });
  });
  return gx;
}

namespace {

// torch's avg_pool2d window: (h0, h1, w0, w1) clipped to the input and the divisor.
struct AvgWindow {
  int64_t h0, h1, w0, w1;
  int64_t divisor;
};

inline AvgWindow avg_window(int64_t oh, int64_t ow, int64_t IH, int64_t IW, int64_t kH,
                            int64_t kW, int64_t sH, int64_t sW, int64_t pH, int64_t pW,
                            bool count_include_pad, int64_t divisor_override) {
  int64_t h0 = oh * sH - pH, w0 = ow * sW - pW;
  int64_t h1 = std::min(h0 + kH, IH + pH), w1 = std::min(w0 + kW, IW + pW);
  const int64_t pool_size = (h1 - h0) * (w1 - w0);
  h0 = std::max<int64_t>(h0, 0);
  w0 = std::max<int64_t>(w0, 0);
  h1 = std::min(h1, IH);
  w1 = std::min(w1, IW);
  int64_t div;
  if (divisor_override != 0) {  // 0: none (torch refuses 0; a negative one divides)
    div = divisor_override;
  } else if (count_include_pad) {
    div = pool_size;
  } else {
    div = (h1 - h0) * (w1 - w0);
  }
  return {h0, h1, w0, w1, div};
}

}  // namespace

at::Tensor avg_pool2d_forward_cpu(const at::Tensor& x, std::vector<int64_t> kernel,
                                  std::vector<int64_t> stride, std::vector<int64_t> padding,
                                  std::vector<int64_t> out_size, bool count_include_pad,
                                  int64_t divisor_override) {
  const int64_t N = x.size(0), C = x.size(1), IH = x.size(2), IW = x.size(3);
  const int64_t OH = out_size[0], OW = out_size[1];
  const int64_t kH = kernel[0], kW = kernel[1], sH = stride[0], sW = stride[1];
  const int64_t pH = padding[0], pW = padding[1];
  const auto fmt = format_of(x);
  at::Tensor y = at::empty({N, C, OH, OW}, x.options().memory_format(fmt));
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "avg_pool2d", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    if (fmt == at::MemoryFormat::Contiguous) {
      const bool s2 = kH == 2 && kW == 2 && sH == 2 && sW == 2 && pH == 0 && pW == 0;
      at::parallel_for(0, N * C, grain_for(OH * OW * kH * kW), [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p) {
          const scalar_t* plane = xp + p * IH * IW;
          scalar_t* yo = yp + p * OH * OW;
          for (int64_t oh = 0; oh < OH; ++oh) {
            if (s2 && (oh * 2 + 1) < IH && OW * 2 <= IW) {  // whole 2x2 windows, divisor 4
              const scalar_t* r0 = plane + oh * 2 * IW;
              const scalar_t* r1 = r0 + IW;
              scalar_t* yr = yo + oh * OW;
              const opmath_t div = opmath_t(divisor_override != 0 ? divisor_override : 4);
              for (int64_t ow = 0; ow < OW; ++ow) {
                const opmath_t sum =
                    ((opmath_t(0) + opmath_t(r0[2 * ow]) + opmath_t(r0[2 * ow + 1])) +
                     opmath_t(r1[2 * ow])) +
                    opmath_t(r1[2 * ow + 1]);
                yr[ow] = scalar_t(sum / div);
              }
              continue;
            }
            for (int64_t ow = 0; ow < OW; ++ow) {
              const AvgWindow w = avg_window(oh, ow, IH, IW, kH, kW, sH, sW, pH, pW,
                                             count_include_pad, divisor_override);
              if (w.h0 >= w.h1 || w.w0 >= w.w1) {
                yo[oh * OW + ow] = scalar_t(0);
                continue;
              }
              opmath_t sum = 0;
              for (int64_t ih = w.h0; ih < w.h1; ++ih)
                for (int64_t iw = w.w0; iw < w.w1; ++iw) sum += opmath_t(plane[ih * IW + iw]);
              yo[oh * OW + ow] = scalar_t(sum / opmath_t(w.divisor));
            }
          }
        }
      });
    } else {
      at::parallel_for(0, N * OH * OW, grain_for(C * kH * kW), [&](int64_t q0, int64_t q1) {
        std::vector<opmath_t> acc(C);
        for (int64_t q = q0; q < q1; ++q) {
          const int64_t n = q / (OH * OW), oh = (q / OW) % OH, ow = q % OW;
          const AvgWindow w = avg_window(oh, ow, IH, IW, kH, kW, sH, sW, pH, pW,
                                         count_include_pad, divisor_override);
          scalar_t* yo = yp + q * C;
          opmath_t* a = acc.data();
          for (int64_t c = 0; c < C; ++c) a[c] = 0;
          if (w.h0 >= w.h1 || w.w0 >= w.w1) {
            for (int64_t c = 0; c < C; ++c) yo[c] = scalar_t(0);
            continue;
          }
          for (int64_t ih = w.h0; ih < w.h1; ++ih)
            for (int64_t iw = w.w0; iw < w.w1; ++iw) {
              const scalar_t* px = xp + ((n * IH + ih) * IW + iw) * C;
              for (int64_t c = 0; c < C; ++c) a[c] += opmath_t(px[c]);
            }
          const opmath_t div = opmath_t(w.divisor);
          for (int64_t c = 0; c < C; ++c) yo[c] = scalar_t(a[c] / div);
        }
      });
    }
  });
  return y;
}

at::Tensor avg_pool2d_backward_cpu(const at::Tensor& grad_y, const at::Tensor& grad_input,
                                   std::vector<int64_t> kernel, std::vector<int64_t> stride,
                                   std::vector<int64_t> padding, bool count_include_pad,
                                   int64_t divisor_override) {
  const auto fmt = format_of(grad_input);
  const at::Tensor& x = grad_input;
  const int64_t N = x.size(0), C = x.size(1), IH = x.size(2), IW = x.size(3);
  const at::Tensor gy = contiguous_as(grad_y, fmt);
  const int64_t OH = gy.size(2), OW = gy.size(3);
  const int64_t kH = kernel[0], kW = kernel[1], sH = stride[0], sW = stride[1];
  const int64_t pH = padding[0], pW = padding[1];
  at::Tensor gx = grad_input;  // uninitialized: written whole below
  if (gy.numel() == 0 || gx.numel() == 0) return gx.zero_();
  // 1x2 or 2x2 windows that tile the input (no padding, stride = kernel), NCHW: each input row
  // written once from its output row, the rows and columns past the windows zero
  const bool tiled = fmt == at::MemoryFormat::Contiguous && kW == 2 && sW == 2 && kH == sH &&
                     kH <= 2 && pH == 0 && pW == 0 && OH * kH <= IH && OW * kW <= IW;
  if (!tiled) gx.zero_();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "avg_pool2d_bwd", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* g = gy.data_ptr<scalar_t>();
    scalar_t* out = gx.data_ptr<scalar_t>();
    if (tiled) {
      const opmath_t div = opmath_t(
          avg_window(0, 0, IH, IW, kH, kW, sH, sW, 0, 0, count_include_pad, divisor_override)
              .divisor);
      at::parallel_for(0, N * C * IH, grain_for(IW), [&](int64_t r0, int64_t r1) {
        divided_pair_rows<scalar_t, opmath_t>(g, out, r0, r1, IH, IW, OH, OW, kH, div);
      });
    } else if (fmt == at::MemoryFormat::Contiguous) {
      at::parallel_for(0, N * C, grain_for(OH * OW * kH * kW), [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p) {
          scalar_t* plane = out + p * IH * IW;
          const scalar_t* gp = g + p * OH * OW;
          for (int64_t oh = 0; oh < OH; ++oh)
            for (int64_t ow = 0; ow < OW; ++ow) {
              const AvgWindow w = avg_window(oh, ow, IH, IW, kH, kW, sH, sW, pH, pW,
                                             count_include_pad, divisor_override);
              const opmath_t v = opmath_t(gp[oh * OW + ow]) / opmath_t(w.divisor);
              for (int64_t ih = w.h0; ih < w.h1; ++ih)
                for (int64_t iw = w.w0; iw < w.w1; ++iw) {
                  scalar_t* d = plane + ih * IW + iw;
                  *d = scalar_t(opmath_t(*d) + v);
                }
            }
        }
      });
    } else {
      at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n)
          for (int64_t oh = 0; oh < OH; ++oh)
            for (int64_t ow = 0; ow < OW; ++ow) {
              const AvgWindow w = avg_window(oh, ow, IH, IW, kH, kW, sH, sW, pH, pW,
                                             count_include_pad, divisor_override);
              const scalar_t* gp = g + ((n * OH + oh) * OW + ow) * C;
              const opmath_t div = opmath_t(w.divisor);
              for (int64_t ih = w.h0; ih < w.h1; ++ih)
                for (int64_t iw = w.w0; iw < w.w1; ++iw) {
                  add_divided<scalar_t, opmath_t>(out + ((n * IH + ih) * IW + iw) * C, gp, div,
                                                  C);
                }
            }
      });
    }
  });
  return gx;
}

namespace {

// s where src[o] == o / s for every output o (an integer scale: each input feeds s outputs in a
// run), else 0
int64_t integer_scale(const int64_t* src, int64_t out, int64_t in) {
  if (in <= 0 || out % in != 0) return 0;
  const int64_t s = out / in;
  for (int64_t o = 0; o < out; ++o)
    if (src[o] != o / s) return 0;
  return s;
}

// out[2 i] = out[2 i + 1] = in[i]: one NCHW output row of a x2 upsampling
template <typename scalar_t>
GK_CPU_CLONES void duplicate_pairs(const scalar_t* __restrict__ in, scalar_t* __restrict__ out,
                                   int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[2 * i] = out[2 * i + 1] = in[i];
}

// d[i] = g[2 i] + g[2 i + 1] (first) or (d[i] + g[2 i]) + g[2 i + 1]: one NCHW output row of a
// x2 upsampling's gradient added into its input row, in the order of the general loop
template <typename scalar_t>
GK_CPU_CLONES void add_pairs(const scalar_t* __restrict__ g, scalar_t* __restrict__ d, int64_t n,
                             bool first) {
  if (first) {
    for (int64_t i = 0; i < n; ++i) d[i] = g[2 * i] + g[2 * i + 1];
  } else {
    for (int64_t i = 0; i < n; ++i) d[i] = (d[i] + g[2 * i]) + g[2 * i + 1];
  }
}

}  // namespace

at::Tensor upsample_nearest2d_forward_cpu(const at::Tensor& x, const at::Tensor& src_h,
                                          const at::Tensor& src_w) {
  const int64_t N = x.size(0), C = x.size(1), IH = x.size(2), IW = x.size(3);
  const int64_t OH = src_h.numel(), OW = src_w.numel();
  const auto fmt = format_of(x);
  at::Tensor y = at::empty({N, C, OH, OW}, x.options().memory_format(fmt));
  if (y.numel() == 0) return y;
  const at::Tensor sh = src_h.contiguous(), sw = src_w.contiguous();
  const int64_t* hp = sh.data_ptr<int64_t>();
  const int64_t* wp = sw.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, x.scalar_type(), "upsample_nearest2d", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    const int64_t scale_h = integer_scale(hp, OH, IH), scale_w = integer_scale(wp, OW, IW);
    if (std::is_same_v<scalar_t, float> && fmt == at::MemoryFormat::Contiguous && scale_h == 2 &&
        scale_w == 2 && pool_2x2_rows_enabled()) {  // x2 both ways: 16 inputs a vector
      at::parallel_for(0, N * C * IH, grain_for(OW * 2), [&](int64_t r0, int64_t r1) {
        upsample_2x_rows(reinterpret_cast<const float*>(xp) + r0 * IW,
                         reinterpret_cast<float*>(yp) + r0 * 2 * OW, r1 - r0, IW);
      });
    } else if (fmt == at::MemoryFormat::Contiguous && scale_h > 0 && scale_w == 2) {
      // x2 along rows, an integer scale down columns: each input row once, its copies memcpy'd
      at::parallel_for(0, N * C * IH, grain_for(OW * scale_h), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          scalar_t* yo = yp + r * scale_h * OW;
          duplicate_pairs<scalar_t>(xp + r * IW, yo, IW);
          for (int64_t k = 1; k < scale_h; ++k)
            std::memcpy(yo + k * OW, yo, sizeof(scalar_t) * OW);
        }
      });
    } else if (fmt == at::MemoryFormat::Contiguous) {
      at::parallel_for(0, N * C * OH, grain_for(OW), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t p = r / OH, oh = r % OH;
          const scalar_t* row = xp + (p * IH + hp[oh]) * IW;
          scalar_t* yo = yp + r * OW;
          for (int64_t ow = 0; ow < OW; ++ow) yo[ow] = row[wp[ow]];
        }
      });
    } else {  // channels_last: per output row, a C-vector copy per pixel
      at::parallel_for(0, N * OH, grain_for(OW * C), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t n = r / OH, oh = r % OH;
          const scalar_t* row = xp + (n * IH + hp[oh]) * IW * C;
          scalar_t* yo = yp + r * OW * C;
          for (int64_t ow = 0; ow < OW; ++ow)
            std::memcpy(yo + ow * C, row + wp[ow] * C, sizeof(scalar_t) * C);
        }
      });
    }
  });
  return y;
}

// The outputs [lo[i], hi[i]) whose nearest source is input i (src is non-decreasing).
static std::pair<std::vector<int64_t>, std::vector<int64_t>> source_ranges(const int64_t* src,
                                                                     int64_t out, int64_t in) {
  std::vector<int64_t> lo(in, 0), hi(in, 0);
  for (int64_t o = out - 1; o >= 0; --o) lo[src[o]] = o;
  for (int64_t o = 0; o < out; ++o) hi[src[o]] = o + 1;
  return {lo, hi};
}

at::Tensor upsample_nearest2d_backward_cpu(const at::Tensor& grad_y, const at::Tensor& src_h,
                                           const at::Tensor& src_w, const at::Tensor& grad_input) {
  const auto fmt = format_of(grad_input);
  const at::Tensor& x = grad_input;
  const int64_t N = x.size(0), C = x.size(1), IH = x.size(2), IW = x.size(3);
  const int64_t OH = src_h.numel(), OW = src_w.numel();
  const at::Tensor gy = contiguous_as(grad_y, fmt);
  at::Tensor gx = grad_input;  // uninitialized: every element is written below
  if (gx.numel() == 0) return gx;
  if (gy.numel() == 0) return gx.zero_();
  const at::Tensor sh = src_h.contiguous(), sw = src_w.contiguous();
  const int64_t* hp = sh.data_ptr<int64_t>();
  const int64_t* wp = sw.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, x.scalar_type(), "upsample_nearest2d_bwd", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    // 16-bit gradients are summed in float32 and rounded once, as torch's kernel (a sum rounded
    // after every add lost ~10x stock's accuracy where many outputs share a source pixel)
    constexpr bool exact = std::is_same_v<scalar_t, opmath_t>;
    const scalar_t* g = gy.data_ptr<scalar_t>();
    const int64_t scale_h = integer_scale(hp, OH, IH), scale_w = integer_scale(wp, OW, IW);
    if (std::is_same_v<scalar_t, float> && fmt == at::MemoryFormat::Contiguous && scale_h == 2 &&
        scale_w == 2 && pool_2x2_rows_enabled()) {  // x2 both ways: 16 inputs a vector
      float* out = reinterpret_cast<float*>(gx.data_ptr<scalar_t>());
      at::parallel_for(0, N * C * IH, grain_for(OW * 2), [&](int64_t r0, int64_t r1) {
        upsample_2x_backward_rows(reinterpret_cast<const float*>(g) + r0 * 2 * OW, out + r0 * IW,
                                  r1 - r0, IW);
      });
    } else if (exact && fmt == at::MemoryFormat::Contiguous && scale_h > 0 && scale_w == 2) {
      // x2 along rows, an integer scale down columns: each input row summed from its output rows
      // in one pass (no zero fill), the adds in the general loop's order
      scalar_t* out = gx.data_ptr<scalar_t>();
      at::parallel_for(0, N * C * IH, grain_for(OW * scale_h), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t k = 0; k < scale_h; ++k)
            add_pairs<scalar_t>(g + (r * scale_h + k) * OW, out + r * IW, IW, k == 0);
      });
    } else if (fmt == at::MemoryFormat::Contiguous) {
      const at::Tensor acc =
          exact ? gx.zero_() : at::zeros(gx.sizes(), gx.options().dtype(at::kFloat));
      opmath_t* out = acc.data_ptr<opmath_t>();
      at::parallel_for(0, N * C, grain_for(OH * OW), [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p) {
          opmath_t* plane = out + p * IH * IW;
          for (int64_t oh = 0; oh < OH; ++oh) {
            opmath_t* row = plane + hp[oh] * IW;
            const scalar_t* gr = g + (p * OH + oh) * OW;
            for (int64_t ow = 0; ow < OW; ++ow) row[wp[ow]] += opmath_t(gr[ow]);
          }
        }
      });
      if (!exact) gx.copy_(acc);
    } else {  // channels_last: a gather per input pixel, the same adds in the same order
      const auto [h_lo, h_hi] = source_ranges(hp, OH, IH);
      const auto [w_lo, w_hi] = source_ranges(wp, OW, IW);
      scalar_t* out = gx.data_ptr<scalar_t>();
      at::parallel_for(0, N * IH, grain_for(IW * C * 4), [&](int64_t r0, int64_t r1) {
        std::vector<opmath_t> sum(C);
        opmath_t* __restrict__ acc = sum.data();
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t n = r / IH, ih = r % IH;
          for (int64_t iw = 0; iw < IW; ++iw) {
            for (int64_t c = 0; c < C; ++c) acc[c] = opmath_t(0);
            for (int64_t oh = h_lo[ih]; oh < h_hi[ih]; ++oh)
              for (int64_t ow = w_lo[iw]; ow < w_hi[iw]; ++ow) {
                const scalar_t* __restrict__ gp = g + ((n * OH + oh) * OW + ow) * C;
                for (int64_t c = 0; c < C; ++c) acc[c] += opmath_t(gp[c]);
              }
            scalar_t* __restrict__ d = out + (r * IW + iw) * C;
            for (int64_t c = 0; c < C; ++c) d[c] = scalar_t(acc[c]);
          }
        }
      });
    }
  });
  return gx;
}

}  // namespace genkern::cpu
