#include "winograd_s2.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "conv_geometry.h"
#include "cpu_clones.h"
#include "path_mode.h"
#include "small_gemm.h"  // blas_as_wide_as_onednn
#include "winograd_lanes.h"

namespace genkern::cpu {
namespace {

// genkern/ops/_winograd.py sets it from GENKERN_CPU_WINOGRAD when genkern.ops is imported
std::atomic<int64_t> g_mode{1};

// F(4, 2) at the points 0, 1, -1, 2 and infinity: the correlation y[i] = d[i] g[0] + d[i+1] g[1]
// (i < 4, d of 5 samples) is y = AT ((G g) * (BT d)), the product taken point by point. BT and AT
// are written out in F42's rows; G, with its fractions, transforms the weights.
constexpr double kG[5][2] = {
    {0.5, 0.0}, {-0.5, -0.5}, {-1.0 / 6, 1.0 / 6}, {1.0 / 6, 1.0 / 3}, {0.0, 1.0}};
constexpr int kAlpha = 5;                  // input samples per tile and dim, and points
constexpr int kPoints = kAlpha * kAlpha;   // products per 4x4 output tile of one 2-D phase
constexpr int kTile = 4;                   // outputs per tile and dim (per phase)

// The transformed tiles (1.56x the input of a conv2d, 6.25x of a conv_transpose2d) go through in
// chunks of the batch (winograd::chunk_images). One process, peak and step time by the chunk's
// bound (no Winograd; a quarter; half; the input's size): DCGAN-32 28.1 MB; 33.6, 33.6, 34.8 MB
// (stock 42.8-44.8); 369, 354, 343 ms; DCGAN-64 114.4 MB; 126.2, 128.6, 135.9 MB (stock 189.1);
// 2113, 1989, 1891 ms. 16 MB chunks, with the 64-tile layers that the rule now leaves out: 48.7
// and 165.8 MB.
using winograd::all_zero;
using winograd::chunk_images;
using winograd::is_pair;
using winograd::load_pixel;
using winograd::store;
using winograd::VecOf;

// The rows of F(4, 2) (winograd_lanes.h): o[a * os] = (BT d)[a] over d[q] = d[q * ds], and
// o[i * os] = (AT m)[i] over m[a] = m[a * ms].
struct F42 {
  static constexpr int kAlpha = 5, kTile = 4;
  template <typename V, typename T>
  static inline __attribute__((always_inline)) void input_row(const V* d, int ds, V* o, int os) {
    const V d0 = d[0], d1 = d[ds], d2 = d[2 * ds], d3 = d[3 * ds], d4 = d[4 * ds];
    o[0] = T(2) * (d0 - d2) - d1 + d3;
    o[os] = d3 - T(2) * d1 - d2;
    o[2 * os] = T(2) * d1 - T(3) * d2 + d3;
    o[3 * os] = d3 - d1;
    o[4 * os] = T(2) * (d1 - d3) - d2 + d4;
  }
  template <typename V, typename T>
  static inline __attribute__((always_inline)) void output_row(const V* m, int ms, V* o, int os) {
    const V m0 = m[0], m1 = m[ms], m2 = m[2 * ms], m3 = m[3 * ms], m4 = m[4 * ms];
    const V sum = m1 + m2, diff = m1 - m2;
    o[0] = m0 + sum + m3;
    o[os] = diff + T(2) * m3;
    o[2 * os] = sum + T(4) * m3;
    o[3 * os] = diff + T(8) * m3 + m4;
  }
};

// o[a * os] = (A y)[a], y[i] = y[i * ys]: the adjoint of F42::output_row, for the weight gradient
template <typename V, typename T>
inline __attribute__((always_inline)) void output_row_adjoint(const V* y, int ys, V* o, int os) {
  const V y0 = y[0], y1 = y[ys], y2 = y[2 * ys], y3 = y[3 * ys];
  o[0] = y0;
  o[os] = y0 + y1 + y2 + y3;
  o[2 * os] = y0 - y1 + y2 - y3;
  o[3 * os] = y0 + T(2) * y1 + T(4) * y2 + T(8) * y3;
  o[4 * os] = y3;
}

// dst[(a * 5 + b) * ld + c] = (A y A^T)[a][b] for c < C, y[i][j] the C channels at src[i*4 + j]
// (null: outside the output gradient, zero): a tile of the output gradient taken back through
// output_tile. False where a value written is not finite.
template <typename T>
GK_CPU_CLONES bool grad_tile(const T* const* src, int64_t C, T* __restrict__ dst, int64_t ld) {
  using V = typename VecOf<T>::type;
  constexpr int L = sizeof(V) / sizeof(T);
  V acc = {};
  for (int64_t c = 0; c < C; c += L) {
    const int n = static_cast<int>(std::min<int64_t>(L, C - c));
    V y[kTile * kTile], t[kAlpha * kTile], m[kPoints];
    for (int i = 0; i < kTile * kTile; ++i) load_pixel(y[i], src[i], c, n);
    for (int j = 0; j < kTile; ++j) output_row_adjoint<V, T>(y + j, kTile, t + j, kTile);
    for (int a = 0; a < kAlpha; ++a)
      output_row_adjoint<V, T>(t + a * kTile, 1, m + a * kAlpha, 1);
    for (int i = 0; i < kPoints; ++i) {
      acc += m[i] - m[i];
      store(dst + i * ld + c, m[i], n);
    }
  }
  return all_zero(acc);
}

// One call's shapes. conv2d (gather): each 4x4 output tile sums the 4 input phases, which lie
// side by side in the GEMMs' K (= 4 C); conv_transpose2d (scatter): each of the 4 output phases
// has its own 25 GEMMs (K = C), 100 in all.
struct Geometry {
  int64_t n, c, h, w, co, oh, ow;
  bool transposed;
  int64_t th, tw;  // tiles per image, down and across
  int64_t k() const { return transposed ? c : 4 * c; }
  int64_t batches() const { return transposed ? 4 * kPoints : kPoints; }
};

Geometry geometry_of(const at::Tensor& x, int64_t co, int64_t oh, int64_t ow, bool transposed) {
  Geometry g{x.size(0), x.size(1), x.size(2), x.size(3), co, oh, ow, transposed, 0, 0};
  // conv2d: output tiles of 4; conv_transpose2d: tiles of 4 per phase, 8 outputs
  const int64_t span = transposed ? 2 * kTile : kTile;
  g.th = (oh + span - 1) / span;
  g.tw = (ow + span - 1) / span;
  return g;
}

// U = G w_p G^T at each of the 25 points for phase p's 2x2 sub-kernel w_p, whose taps are
// k(p, r), r = 0, 1 in each dim: conv2d 2r + 1 - p (input phases), conv_transpose2d 3 - 2r - p
// (output phases). The weight is read as [R, 4, 4, S] (channels_last: S contiguous; conv2d: R =
// C_out, S = C_in; conv_transpose2d: R = C_in, S = C_out), one row r per task; dst(point, p, r)
// is where the S values of (point, phase, r) go.
template <typename T, typename Dst>
bool transform_weight(const T* w, int64_t rows, int64_t s, bool transposed, const Dst& dst) {
  std::atomic<bool> finite{true};
  at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
    std::vector<T> t(2 * kAlpha * s);  // G applied down: [rx][a][s]
    T acc = 0;
    for (int64_t r = r0; r < r1; ++r) {
      for (int p = 0; p < 4; ++p) {
        const int py = p / 2, px = p % 2;
        auto tap = [&](int ph, int i) { return transposed ? 3 - 2 * i - ph : 2 * i + 1 - ph; };
        for (int rx = 0; rx < 2; ++rx) {
          const T* w0 = w + ((r * 4 + tap(py, 0)) * 4 + tap(px, rx)) * s;
          const T* w1 = w + ((r * 4 + tap(py, 1)) * 4 + tap(px, rx)) * s;
          for (int a = 0; a < kAlpha; ++a) {
            const T g0 = static_cast<T>(kG[a][0]), g1 = static_cast<T>(kG[a][1]);
            T* out = t.data() + (rx * kAlpha + a) * s;
            for (int64_t c = 0; c < s; ++c) out[c] = g0 * w0[c] + g1 * w1[c];
          }
        }
        for (int a = 0; a < kAlpha; ++a) {
          const T* t0 = t.data() + a * s;
          const T* t1 = t.data() + (kAlpha + a) * s;
          for (int b = 0; b < kAlpha; ++b) {
            const T g0 = static_cast<T>(kG[b][0]), g1 = static_cast<T>(kG[b][1]);
            T* out = dst(a * kAlpha + b, p, r);
            for (int64_t c = 0; c < s; ++c) {
              out[c] = g0 * t0[c] + g1 * t1[c];
              acc += out[c] - out[c];
            }
          }
        }
      }
    }
    if (acc != 0) finite = false;
  });
  return finite;
}

// The GEMMs' right-hand sides: conv2d [25, 4 C_in, C_out] (stored as its transpose, (p, C_in)
// contiguous), conv_transpose2d [100, C_in, C_out] ((p, point) major); undefined where a value is
// not finite or the weight is out of winograd::within_range.
at::Tensor transformed_weight(const at::Tensor& weight, bool transposed) {
  const at::Tensor w = weight.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t rows = w.size(0), s = w.size(1);
  const auto opts = weight.options();
  at::Tensor u = transposed ? at::empty({4 * kPoints, rows, s}, opts)
                            : at::empty({kPoints, rows, 4 * s}, opts);
  bool finite = true;
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "winograd_s2_weight", [&] {
    scalar_t* base = u.data_ptr<scalar_t>();
    const scalar_t* src = w.const_data_ptr<scalar_t>();
    if (!winograd::within_range(src, w.numel()))
      finite = false;  // a tap whose transform would swamp the small taps' outputs
    else if (transposed)
      finite = transform_weight(src, rows, s, true, [&](int point, int p, int64_t r) {
        return base + ((p * kPoints + point) * rows + r) * s;
      });
    else
      finite = transform_weight(src, rows, s, false, [&](int point, int p, int64_t r) {
        return base + (point * rows + r) * 4 * s + p * s;
      });
  });
  if (!finite) return at::Tensor();
  return transposed ? u : u.transpose(1, 2);
}

// for_each_tile over the chunk's tiles of this call, one or more tiles a task.
template <typename F>
bool for_each_tile(const Geometry& g, int64_t n0, int64_t tiles, const F& tile) {
  return winograd::for_each_tile(g.th * g.tw, g.tw, n0, tiles, 1, tile);
}

// pixels[i*4 + j]: output (i, j) of tile (ty, tx) in phase (py, px) of one NHWC image (conv2d:
// phase 0 only), or null outside the output.
template <typename P>
void tile_outputs(P* image, const Geometry& g, int64_t ty, int64_t tx, int py, int px,
                  P** pixels) {
  for (int i = 0; i < kTile; ++i)
    for (int j = 0; j < kTile; ++j) {
      const int64_t oy = g.transposed ? 2 * (kTile * ty + i) + py : kTile * ty + i;
      const int64_t ox = g.transposed ? 2 * (kTile * tx + j) + px : kTile * tx + j;
      pixels[i * kTile + j] = oy < g.oh && ox < g.ow ? image + (oy * g.ow + ox) * g.co : nullptr;
    }
}

// Transforms the input tiles of the chunk starting at image n0 into V (rows of K); false where a
// value is not finite.
template <typename T>
bool transform_input(const T* x, const Geometry& g, int64_t n0, int64_t tiles, T* v) {
  const int64_t k = g.k(), ld = tiles * k;
  return for_each_tile(g, n0, tiles, [&](int64_t t, int64_t n, int64_t ty, int64_t tx) {
    const T* image = x + n * g.h * g.w * g.c;
    const T* src[kPoints];
    bool finite = true;
    for (int p = 0; p < 4; ++p) {
      const int py = p / 2, px = p % 2;
      // first sample and step of the phase's window: conv2d reads every other input pixel
      const int64_t y0 = g.transposed ? kTile * ty - 1 + py : 2 * kTile * ty - py;
      const int64_t x0 = g.transposed ? kTile * tx - 1 + px : 2 * kTile * tx - px;
      const int64_t step = g.transposed ? 1 : 2;
      for (int q = 0; q < kAlpha; ++q)
        for (int r = 0; r < kAlpha; ++r) {
          const int64_t iy = y0 + step * q, ix = x0 + step * r;
          src[q * kAlpha + r] = iy >= 0 && iy < g.h && ix >= 0 && ix < g.w
                                    ? image + (iy * g.w + ix) * g.c
                                    : nullptr;
        }
      T* dst = g.transposed ? v + p * kPoints * ld + t * k : v + t * k + p * g.c;
      finite &= winograd::input_tile<F42>(src, g.c, dst, ld);
    }
    return finite;
  });
}

// Writes the output tiles of the chunk starting at image n0 from M (rows of C_out) into y (NHWC);
// false where a value is not finite.
template <typename T>
bool transform_output(const T* m, const T* bias, const Geometry& g, int64_t n0, int64_t tiles,
                      T* y) {
  const int64_t ld = tiles * g.co;
  return for_each_tile(g, n0, tiles, [&](int64_t t, int64_t n, int64_t ty, int64_t tx) {
    T* dst[kTile * kTile];
    bool finite = true;
    for (int p = 0; p < (g.transposed ? 4 : 1); ++p) {
      tile_outputs(y + n * g.oh * g.ow * g.co, g, ty, tx, p / 2, p % 2, dst);
      finite &= winograd::output_tile<F42>(m + p * kPoints * ld + t * g.co, ld, g.co, bias, dst);
    }
    return finite;
  });
}

// Takes the output gradient's tiles of the chunk starting at image n0 (a conv2d geometry, C_out
// channels) back through the output transform into dM (rows of C_out); false where a value is not
// finite.
template <typename T>
bool transform_grad(const T* grad, const Geometry& g, int64_t n0, int64_t tiles, T* dm) {
  const int64_t ld = tiles * g.co;
  return for_each_tile(g, n0, tiles, [&](int64_t t, int64_t n, int64_t ty, int64_t tx) {
    const T* src[kTile * kTile];
    tile_outputs(grad + n * g.oh * g.ow * g.co, g, ty, tx, 0, 0, src);
    return grad_tile(src, g.co, dm + t * g.co, ld);
  });
}

// dW [K, C, 4, 4] from dU [25, 4 C, K] (rows (point, phase, c)): each tap (ky, kx) is tap
// (ry, rx) of one phase p of conv2d's input, dW = sum over points G[a][ry] G[b][rx] dU_p: one
// [16, 100] x [100, C K] product.
at::Tensor weight_from_transformed(const at::Tensor& du, int64_t c, int64_t k) {
  double adjoint[16][kPoints * 4] = {};
  for (int ky = 0; ky < 4; ++ky)
    for (int kx = 0; kx < 4; ++kx) {
      // conv2d's phase taps are 2r + 1 - p: tap 0 is (p 1, r 0), 1 (0, 0), 2 (1, 1), 3 (0, 1)
      const int py = 1 - ky % 2, ry = ky / 2, px = 1 - kx % 2, rx = kx / 2;
      for (int a = 0; a < kAlpha; ++a)
        for (int b = 0; b < kAlpha; ++b)
          adjoint[ky * 4 + kx][(a * kAlpha + b) * 4 + py * 2 + px] = kG[a][ry] * kG[b][rx];
    }
  const at::Tensor m = at::from_blob(&adjoint[0][0], {16, kPoints * 4}, at::kDouble)
                           .to(du.scalar_type(), false, /*copy=*/true);
  return at::mm(m, du.view({kPoints * 4, c * k})).view({4, 4, c, k}).permute({3, 2, 0, 1});
}

// The conv (transposed: conv_transpose2d) of x onto co channels over oh x ow pixels, in format
// fmt; undefined where an input, a weight or a transformed value is not finite (inf - inf in a
// transform would turn an output that should be infinite into NaN, or spread a NaN into the
// tile's neighbouring outputs): the caller then takes the direct path.
at::Tensor run(const at::Tensor& x, const at::Tensor& weight,
               const std::optional<at::Tensor>& bias, int64_t co, int64_t oh, int64_t ow,
               at::MemoryFormat fmt, bool transposed) {
  const auto cl = at::MemoryFormat::ChannelsLast;
  const at::Tensor u = transformed_weight(weight, transposed);
  if (!u.defined()) return u;
  const at::Tensor xc = x.contiguous(cl);
  const Geometry g = geometry_of(xc, co, oh, ow, transposed);
  at::Tensor y = at::empty({g.n, co, oh, ow}, x.options().memory_format(cl));
  const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  const int64_t per_image = g.th * g.tw;
  const int64_t images = chunk_images(x, g.batches() * per_image * g.k());
  at::Tensor v = at::empty({g.batches(), images * per_image, g.k()}, x.options());
  at::Tensor m = at::empty({g.batches(), images * per_image, co}, x.options());
  bool finite = true;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "winograd_s2", [&] {
    for (int64_t n0 = 0; n0 < g.n && finite; n0 += images) {
      const int64_t tiles = std::min(images, g.n - n0) * per_image;
      if (tiles != v.size(1)) {  // the last, shorter chunk: dense buffers of its size
        v = at::empty({g.batches(), tiles, g.k()}, x.options());
        m = at::empty({g.batches(), tiles, co}, x.options());
      }
      finite = transform_input(xc.const_data_ptr<scalar_t>(), g, n0, tiles,
                               v.data_ptr<scalar_t>());
      if (!finite) break;
      at::bmm_out(m, v, u);
      finite = transform_output(m.const_data_ptr<scalar_t>(),
                                b.defined() ? b.const_data_ptr<scalar_t>() : nullptr, g, n0,
                                tiles, y.data_ptr<scalar_t>());
    }
  });
  if (!finite) return at::Tensor();
  return y.contiguous(fmt);
}

// Tiles of 4x4 pixels over the small side of a 4x4 stride-2 conv (the conv's output, or the
// transposed conv's input), over the whole batch.
int64_t small_side_tiles(const at::Tensor& x, bool transposed) {
  const int64_t h = transposed ? x.size(2) : conv_output_size(x.size(2), 4, 2, 1, 1);
  const int64_t w = transposed ? x.size(3) : conv_output_size(x.size(3), 4, 2, 1, 1);
  return x.size(0) * ((h + kTile - 1) / kTile) * ((w + kTile - 1) / kTile);
}


}  // namespace

void set_winograd_mode(int64_t mode) { set_path_mode(g_mode, mode, "winograd"); }
int64_t winograd_mode() { return g_mode.load(); }

bool use_winograd_s2(const at::Tensor& x, const at::Tensor& weight,
                     const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
                     const std::vector<int64_t>& dilation, int64_t groups, bool transposed) {
  const int64_t mode = g_mode.load(std::memory_order_relaxed);
  const auto dtype = x.scalar_type();
  if (mode == 0 || x.dim() != 4 || weight.dim() != 4 || groups != 1 || !x.is_cpu() ||
      (dtype != at::kFloat && dtype != at::kDouble) || weight.scalar_type() != dtype ||
      weight.size(2) != 4 || weight.size(3) != 4 || !is_pair(stride, 2) ||
      !is_pair(padding, 1) || !is_pair(dilation, 1) || x.numel() == 0 || weight.numel() == 0)
    return false;
  // a conv's padded input must hold the kernel; mismatched channels: ATen's errors
  if (!transposed && (x.size(2) < 2 || x.size(3) < 2)) return false;
  if (x.size(1) != weight.size(transposed ? 0 : 1)) return false;
  if (mode == 2) return true;
  // auto (measured on the 2-core Zen 1 through autograd, 2 threads): float32, 64+ channels on
  // both sides and 256+ tiles of the small side (4x4 pixels per image) across the batch. The
  // weight gradient's GEMMs sum over the tiles, which need to be many (ms, genkern's direct AVX2
  // kernel -> Winograd): 64 -> 128 channels over 1024 tiles 69.5 -> 35.5, over 256 16.5 -> 10.8;
  // 128 -> 256 over 64 tiles 15.6 -> 16.6, 256 -> 512 69.0 -> 82.1. The weights' transform
  // writes 100 values per C_in x C_out pair, which few tiles do not pay back: 512 -> 256
  // channels 4x4 -> 8x8 at batch 16 (16 tiles) 36 -> 79 ms; at batch 64 (64 tiles) 1.16-1.3x
  // faster, but its 52 MB of transformed weights would lift a DCGAN-64 step's memory peak from
  // 0.60x stock's to 0.88x. 32 <-> 64 channels at 7x7 <-> 14x14 (an autoencoder's, a VAE's
  // layers) lose 10-17%: oneDNN runs those near its peak.
  // Its GEMMs are ATen's: where they run narrower vectors than oneDNN's convs (MKL's AVX2 code on
  // an AMD AVX-512 CPU), it loses (2-core Zen 5, forward + backward, ms: D 64 -> 128 46.6 -> 65.3,
  // G 256 -> 128 33.4 -> 55.3).
  const int64_t cin = x.size(1), cout = transposed ? weight.size(1) : weight.size(0);
  return blas_as_wide_as_onednn() && dtype == at::kFloat && cin >= 64 && cout >= 64 &&
         small_side_tiles(x, transposed) >= 256;
}

at::Tensor winograd_s2_conv2d(const at::Tensor& x, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, int64_t oh, int64_t ow,
                              at::MemoryFormat fmt) {
  return run(x, weight, bias, weight.size(0), oh, ow, fmt, /*transposed=*/false);
}

at::Tensor winograd_s2_conv_transpose2d(const at::Tensor& x, const at::Tensor& weight,
                                        const std::optional<at::Tensor>& bias, int64_t oh,
                                        int64_t ow, at::MemoryFormat fmt) {
  return run(x, weight, bias, weight.size(1), oh, ow, fmt, /*transposed=*/true);
}

// The weight gradient of conv2d(x, w) from grad_y: dU = sum over tiles V^T dM at each point
// (one batched product per chunk, accumulated in chunk order), then dW by the adjoint of the
// weights' transform; undefined where a value is not finite.
at::Tensor winograd_s2_conv2d_weight_grad(const at::Tensor& x, const at::Tensor& grad_y,
                                          at::MemoryFormat fmt) {
  const auto cl = at::MemoryFormat::ChannelsLast;
  const at::Tensor xc = x.contiguous(cl), gc = grad_y.contiguous(cl);
  const int64_t co = gc.size(1);
  const Geometry g = geometry_of(xc, co, gc.size(2), gc.size(3), /*transposed=*/false);
  const int64_t per_image = g.th * g.tw;
  const int64_t images = chunk_images(x, kPoints * per_image * (g.k() + co));
  at::Tensor du = at::zeros({kPoints, g.k(), co}, x.options());
  at::Tensor v, dm;
  bool finite = true;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "winograd_s2_weight_grad", [&] {
    for (int64_t n0 = 0; n0 < g.n && finite; n0 += images) {
      const int64_t tiles = std::min(images, g.n - n0) * per_image;
      if (!v.defined() || tiles != v.size(1)) {
        v = at::empty({kPoints, tiles, g.k()}, x.options());
        dm = at::empty({kPoints, tiles, co}, x.options());
      }
      finite = transform_input(xc.const_data_ptr<scalar_t>(), g, n0, tiles,
                               v.data_ptr<scalar_t>()) &&
               transform_grad(gc.const_data_ptr<scalar_t>(), g, n0, tiles,
                              dm.data_ptr<scalar_t>());
      if (finite) du.baddbmm_(v.transpose(1, 2), dm);
    }
  });
  if (!finite) return at::Tensor();
  const at::Tensor dw = weight_from_transformed(du, g.c, co).contiguous(fmt);
  if (!at::isfinite(dw).all().item<bool>()) return at::Tensor();  // overflowed in a transform
  return dw;
}

}  // namespace genkern::cpu
