#include "winograd_3x3.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>

#include <algorithm>

#include "winograd_lanes.h"

namespace genkern::cpu {
namespace {

using winograd::is_pair;

// F(2, 3) at the points 0, 1, -1 and infinity: y[i] = sum_k d[i + k] g[k] (i < 2, d of 4
// samples) is AT ((G g) * (BT d)), the product taken point by point. BT and AT hold only 0 and
// +-1 and G halves: the error is the direct conv's order (F(4, 3), at the points 0, +-1, +-2
// and infinity, ran the CNN's 32 -> 64 layer's GEMMs in 22 us where F(2, 3) takes 42, but with
// 12x stock's float32 error: 1.7e-5 against 1.4e-6 at outputs of 3.9).
struct F23 {
  static constexpr int kAlpha = 4, kTile = 2;
  static constexpr double kG[kAlpha][3] = {
      {1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
  // o[a * os] = (BT d)[a] over d[q] = d[q * ds]
  template <typename V, typename T>
  static inline __attribute__((always_inline)) void input_row(const V* d, int ds, V* o, int os) {
    const V d0 = d[0], d1 = d[ds], d2 = d[2 * ds], d3 = d[3 * ds];
    o[0] = d0 - d2;
    o[os] = d1 + d2;
    o[2 * os] = d2 - d1;
    o[3 * os] = d1 - d3;
  }
  // o[i * os] = (AT m)[i] over m[a] = m[a * ms]
  template <typename V, typename T>
  static inline __attribute__((always_inline)) void output_row(const V* m, int ms, V* o, int os) {
    const V m0 = m[0], m1 = m[ms], m2 = m[2 * ms], m3 = m[3 * ms];
    o[0] = m0 + m1 + m2;
    o[os] = m1 - m2 - m3;
  }
};

// U[p][c][o] = (G w[o][c] G^T)[p], w [C_out, C_in, 3, 3] contiguous, one output channel per task
template <typename F, typename T>
void transform_weight(const T* w, int64_t co, int64_t ci, T* u) {
  constexpr int A = F::kAlpha;
  at::parallel_for(0, co, 1, [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o)
      for (int64_t c = 0; c < ci; ++c) {
        const T* g = w + (o * ci + c) * 9;
        double t[A][3];  // G g
        for (int a = 0; a < A; ++a)
          for (int k = 0; k < 3; ++k)
            t[a][k] = F::kG[a][0] * g[k] + F::kG[a][1] * g[3 + k] + F::kG[a][2] * g[6 + k];
        for (int a = 0; a < A; ++a)
          for (int b = 0; b < A; ++b)
            u[((a * A + b) * ci + c) * co + o] = static_cast<T>(
                t[a][0] * F::kG[b][0] + t[a][1] * F::kG[b][1] + t[a][2] * F::kG[b][2]);
      }
  });
}

// One call's tiles: kTile x kTile outputs each, th x tw per image of h x w pixels (the output's
// size, which is the input's).
struct Tiles {
  int64_t c, co, h, w, th, tw;
  int64_t per_image() const { return th * tw; }
};

// Transformed values per task: a batch-1 layer's few tiles run on the calling thread.
constexpr int64_t kValuesPerTask = int64_t(1) << 16;

// winograd::for_each_tile over the chunk's tiles of this call, `values` transformed values a tile
template <typename Fn>
bool for_each_tile(const Tiles& g, int64_t n0, int64_t tiles, int64_t values, const Fn& tile) {
  const int64_t grain = std::max<int64_t>(1, kValuesPerTask / values);
  return winograd::for_each_tile(g.per_image(), g.tw, n0, tiles, grain, tile);
}

// V[p][t][c]: the chunk's input tiles (NHWC x), kAlpha x kAlpha windows from (M ty - 1, M tx - 1)
template <typename F, typename T>
bool transform_input(const T* x, const Tiles& g, int64_t n0, int64_t tiles, T* v) {
  constexpr int A = F::kAlpha, M = F::kTile;
  const int64_t values = A * A * g.c;  // per tile
  return for_each_tile(g, n0, tiles, values, [&](int64_t t, int64_t n, int64_t ty, int64_t tx) {
    const T* image = x + n * g.h * g.w * g.c;
    const T* src[A * A];
    for (int q = 0; q < A; ++q)
      for (int r = 0; r < A; ++r) {
        const int64_t iy = M * ty - 1 + q, ix = M * tx - 1 + r;
        const bool inside = iy >= 0 && iy < g.h && ix >= 0 && ix < g.w;
        src[q * A + r] = inside ? image + (iy * g.w + ix) * g.c : nullptr;
      }
    return winograd::input_tile<F>(src, g.c, v + t * g.c, tiles * g.c);
  });
}

// y (NHWC) from M[p][t][o], the bias added
template <typename F, typename T>
bool transform_output(const T* m, const T* bias, const Tiles& g, int64_t n0, int64_t tiles,
                      T* y) {
  constexpr int A = F::kAlpha, M = F::kTile;
  const int64_t values = A * A * g.co;  // per tile
  return for_each_tile(g, n0, tiles, values, [&](int64_t t, int64_t n, int64_t ty, int64_t tx) {
    T* image = y + n * g.h * g.w * g.co;
    T* dst[M * M];
    for (int i = 0; i < M; ++i)
      for (int j = 0; j < M; ++j) {
        const int64_t oy = M * ty + i, ox = M * tx + j;
        dst[i * M + j] = oy < g.h && ox < g.w ? image + (oy * g.w + ox) * g.co : nullptr;
      }
    return winograd::output_tile<F>(m + t * g.co, tiles * g.co, g.co, bias, dst);
  });
}

// The conv by F, whose U is `packed`; see winograd_3x3_conv2d.
template <typename F>
at::Tensor run(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& b,
               at::MemoryFormat fmt) {
  constexpr int A = F::kAlpha, M = F::kTile;
  const auto cl = at::MemoryFormat::ChannelsLast;
  const at::Tensor xc = x.contiguous(cl);
  const int64_t n = xc.size(0), h = xc.size(2), w = xc.size(3);
  const Tiles g{xc.size(1), packed.size(2), h, w, (h + M - 1) / M, (w + M - 1) / M};
  at::Tensor y = at::empty({n, g.co, h, w}, x.options().memory_format(cl));
  const int64_t images = winograd::chunk_images(xc, A * A * g.per_image() * std::max(g.c, g.co));
  at::Tensor v, m;
  bool finite = true;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "winograd_3x3", [&] {
    for (int64_t n0 = 0; n0 < n && finite; n0 += images) {
      const int64_t tiles = std::min(images, n - n0) * g.per_image();
      if (!v.defined() || tiles != v.size(1)) {  // the first chunk, and a last, shorter one
        v = at::empty({A * A, tiles, g.c}, x.options());
        m = at::empty({A * A, tiles, g.co}, x.options());
      }
      finite = transform_input<F>(xc.const_data_ptr<scalar_t>(), g, n0, tiles,
                                  v.data_ptr<scalar_t>());
      if (!finite) break;
      at::bmm_out(m, v, packed);
      finite = transform_output<F>(m.const_data_ptr<scalar_t>(),
                                   b.defined() ? b.const_data_ptr<scalar_t>() : nullptr, g, n0,
                                   tiles, y.data_ptr<scalar_t>());
    }
  });
  if (!finite) return at::Tensor();
  // one pixel: NHWC is NCHW's memory, and stock's strides are NCHW's in either format (an
  // [N, C, 1, 1] tensor is contiguous in both, so contiguous(fmt) would keep the NHWC strides)
  if (h * w == 1) return y.as_strided({n, g.co, 1, 1}, {g.co, 1, 1, 1});
  return y.contiguous(fmt);
}


}  // namespace

bool winograd_3x3_available(const at::Tensor& x, const at::Tensor& weight,
                            const std::vector<int64_t>& stride,
                            const std::vector<int64_t>& padding,
                            const std::vector<int64_t>& dilation, int64_t groups) {
  const auto dtype = x.scalar_type();
  return x.dim() == 4 && weight.dim() == 4 && groups == 1 && x.is_cpu() && weight.is_cpu() &&
         (dtype == at::kFloat || dtype == at::kDouble) && weight.scalar_type() == dtype &&
         weight.size(2) == 3 && weight.size(3) == 3 && is_pair(stride, 1) &&
         is_pair(padding, 1) && is_pair(dilation, 1) && x.size(1) == weight.size(1) &&
         x.numel() > 0 && weight.numel() > 0;
}

at::Tensor winograd_3x3_pack_weight(const at::Tensor& weight) {
  const at::Tensor w = weight.contiguous();
  const int64_t co = w.size(0), ci = w.size(1);
  at::Tensor u = at::empty({F23::kAlpha * F23::kAlpha, ci, co}, w.options());
  bool in_range = true;
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "winograd_3x3_weight", [&] {
    in_range = winograd::within_range(w.const_data_ptr<scalar_t>(), w.numel());
    if (in_range)
      transform_weight<F23>(w.const_data_ptr<scalar_t>(), co, ci, u.data_ptr<scalar_t>());
  });
  return in_range ? u : at::empty({0}, w.options());
}

at::Tensor winograd_3x3_conv2d(const at::Tensor& x, const at::Tensor& packed,
                               const std::optional<at::Tensor>& bias, at::MemoryFormat fmt) {
  if (packed.numel() == 0) return at::Tensor();  // a weight out of the transforms' range
  const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  if (b.defined() &&
      (b.scalar_type() != x.scalar_type() || b.dim() != 1 || b.numel() != packed.size(2)))
    return at::Tensor();  // the caller's other path raises ATen's error
  return run<F23>(x, packed, b, fmt);
}

}  // namespace genkern::cpu
