#include "conv_gemm.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>

#include <algorithm>
#include <atomic>

#include "conv_geometry.h"
#include "layout_copy.h"
#include "linear_act.h"
#include "path_mode.h"
#include "small_gemm.h"

namespace genkern::cpu {
namespace {

// genkern/ops/_conv_gemm.py sets it from GENKERN_CPU_CONV_GEMM when genkern.ops is imported
std::atomic<int64_t> g_mode{1};

// Column-buffer floats per chunk of samples: 8 MB in float32, and GEMMs of 512 rows or more
// for the layers the rule picks (as fast per FLOP as one GEMM over the whole batch, measured).
constexpr int64_t kColumnFloats = int64_t(1) << 21;

// For each output index o of one spatial dim, the (tap k, input index i) pairs with
// o = i * stride - padding + k * dilation, in increasing k: entries [start[o], start[o + 1]).
struct Taps {
  std::vector<int64_t> start, k, i;
};

Taps taps_of(int64_t out, int64_t in, int64_t kernel, int64_t stride, int64_t padding,
             int64_t dilation) {
  Taps t;
  t.start.reserve(out + 1);
  for (int64_t o = 0; o < out; ++o) {
    t.start.push_back(static_cast<int64_t>(t.k.size()));
    for (int64_t k = 0; k < kernel; ++k) {
      const int64_t s = o + padding - k * dilation;  // = i * stride
      if (s < 0 || s % stride != 0 || s / stride >= in) continue;
      t.k.push_back(k);
      t.i.push_back(s / stride);
    }
  }
  t.start.push_back(static_cast<int64_t>(t.k.size()));
  return t;
}

// The transposed conv of ci channels over h x w pixels onto co channels over oh x ow (weight
// [ci, co, kh, kw]). The columns of cols and of the im2col rows follow the weight's memory order:
// (co, kh, kw) for a contiguous weight, (kh, kw, co) for a channels_last one (hwc), so that the
// weight is a [ci, columns] matrix without a copy.
struct Geometry {
  int64_t ci, h, w, co, kh, kw, oh, ow;
  bool hwc = false;
  int64_t columns() const { return co * kh * kw; }
  int64_t column(int64_t c, int64_t tap) const { return hwc ? tap * co + c : c * kh * kw + tap; }
  // The column buffer's row stride: 16 floats past `columns`, so that rows a power of two apart
  // do not all map to the same cache sets (the gather reads one line from each of many rows).
  int64_t ld() const { return columns() + 16; }
};

// The inverse of Taps: input index i lands on outputs o0[i] + j * step by taps k0[i] + j, for
// j < len[i] (the taps of one input index are consecutive: o = i * stride - padding + k * step).
struct Footprints {
  std::vector<int64_t> k0, o0, len;
  int64_t step = 1;
};

Footprints footprints_of(const Taps& t, int64_t in) {
  Footprints f;
  f.k0.assign(in, 0);
  f.o0.assign(in, 0);
  f.len.assign(in, 0);
  const int64_t out = static_cast<int64_t>(t.start.size()) - 1;
  for (int64_t o = 0; o < out; ++o) {
    for (int64_t a = t.start[o]; a < t.start[o + 1]; ++a) {
      const int64_t i = t.i[a];
      if (f.len[i] == 0) {
        f.k0[i] = t.k[a];
        f.o0[i] = o;
      } else if (f.len[i] == 1) {
        f.step = o - f.o0[i];  // the dilation
      }
      ++f.len[i];
    }
  }
  return f;
}

// One NCHW output plane of col2im: out = b, plus each input pixel's taps (its column row from
// `cols`, rows ld apart, tap (kh, kw) at kh * kw_size + kw) added onto its footprint. Pixels go in
// decreasing (ih, iw): every output receives its taps in increasing (kh, kw), the order in which
// the hwc gather adds them (the same bits in both layouts).
template <typename scalar_t>
void scatter_plane(const scalar_t* __restrict__ cols, int64_t ld, scalar_t b,
                   scalar_t* __restrict__ out, const Geometry& g, const Footprints& fh,
                   const Footprints& fw) {
  std::fill(out, out + g.oh * g.ow, b);
  const int64_t sh = fh.step * g.ow, sw = fw.step;
  for (int64_t ih = g.h - 1; ih >= 0; --ih) {
    const int64_t rows = fh.len[ih];
    scalar_t* orow0 = out + fh.o0[ih] * g.ow;
    for (int64_t iw = g.w - 1; iw >= 0; --iw) {
      const scalar_t* src = cols + (ih * g.w + iw) * ld + fh.k0[ih] * g.kw + fw.k0[iw];
      scalar_t* dst = orow0 + fw.o0[iw];
      const int64_t len = fw.len[iw];
      for (int64_t r = 0; r < rows; ++r, src += g.kw, dst += sh) {
        if (sw == 1) {
          for (int64_t j = 0; j < len; ++j) dst[j] += src[j];
        } else {
          for (int64_t j = 0; j < len; ++j) dst[j * sw] += src[j];
        }
      }
    }
  }
}

// Samples per chunk: the column buffer at most kColumnFloats, at least one sample.
int64_t chunk_samples(const Geometry& g) {
  return std::max<int64_t>(1, kColumnFloats / std::max<int64_t>(g.h * g.w * g.columns(), 1));
}

// y[n, co, oh, ow] (`count` samples, NCHW or, for hwc, NHWC, contiguous) = bias[co] + the sum of
// the columns of every tap landing there, in increasing (kh, kw), read from cols[(n, ih, iw),
// column(co, tap)] (rows g.ld() apart). Both layouts add in the same order: the same bits.
template <typename scalar_t>
void col2im(const scalar_t* cols, const scalar_t* bias, scalar_t* y, int64_t count,
            const Geometry& g, const Taps& th, const Taps& tw) {
  const int64_t ld = g.ld(), plane = g.oh * g.ow;
  if (g.hwc) {  // one output pixel per task step: contiguous rows of co floats added
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(g.co * 4, 1));
    at::parallel_for(0, count * plane, grain, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t n = p / plane, oh = p % plane / g.ow, ow = p % g.ow;
        scalar_t* out = y + p * g.co;
        for (int64_t c = 0; c < g.co; ++c) out[c] = bias != nullptr ? bias[c] : scalar_t(0);
        for (int64_t a = th.start[oh]; a < th.start[oh + 1]; ++a) {
          for (int64_t e = tw.start[ow]; e < tw.start[ow + 1]; ++e) {
            const scalar_t* src = cols + ((n * g.h + th.i[a]) * g.w + tw.i[e]) * ld +
                                  (th.k[a] * g.kw + tw.k[e]) * g.co;
            for (int64_t c = 0; c < g.co; ++c) out[c] += src[c];
          }
        }
      }
    });
    return;
  }
  // One (sample, channel) plane per task step (scatter_plane).
  const Footprints fh = footprints_of(th, g.h), fw = footprints_of(tw, g.w);
  const int64_t taps = g.h * g.w * g.kh * g.kw;  // adds per plane, about
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(taps, 1));
  at::parallel_for(0, count * g.co, grain, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n = p / g.co, c = p % g.co;
      scatter_plane(cols + n * g.h * g.w * ld + g.column(c, 0), ld,
                    bias != nullptr ? bias[c] : scalar_t(0), y + p * plane, g, fh, fw);
    }
  });
}

// d[(n, ih, iw), column(co, tap)] = grad_y[n0 + n, co, ih * s - p + kh * d, ..] (0 off the
// output) for `count` samples (rows g.ld() apart): the rows the backward's GEMMs read.
template <typename scalar_t>
void im2col(const at::Tensor& grad_y, int64_t n0, int64_t count, const Geometry& g,
            const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
            const std::vector<int64_t>& dilation, scalar_t* d) {
  const scalar_t* gy = grad_y.data_ptr<scalar_t>();
  const int64_t sn = grad_y.stride(0), sc = grad_y.stride(1), sh = grad_y.stride(2),
                sw = grad_y.stride(3), ld = g.ld();
  at::parallel_for(0, count * g.h * g.w, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = n0 + r / (g.h * g.w), ih = r / g.w % g.h, iw = r % g.w;
      scalar_t* row = d + r * ld;
      if (g.hwc) {  // taps outer, channels inner: contiguous reads of a channels_last grad_y
        for (int64_t a = 0; a < g.kh; ++a) {
          const int64_t oh = ih * stride[0] - padding[0] + a * dilation[0];
          for (int64_t b = 0; b < g.kw; ++b) {
            const int64_t ow = iw * stride[1] - padding[1] + b * dilation[1];
            scalar_t* dst = row + (a * g.kw + b) * g.co;
            if (oh < 0 || oh >= g.oh || ow < 0 || ow >= g.ow) {
              for (int64_t c = 0; c < g.co; ++c) dst[c] = scalar_t(0);
            } else {
              const scalar_t* src = gy + n * sn + oh * sh + ow * sw;
              for (int64_t c = 0; c < g.co; ++c) dst[c] = src[c * sc];
            }
          }
        }
        continue;
      }
      for (int64_t c = 0; c < g.co; ++c) {
        const scalar_t* src = gy + n * sn + c * sc;
        for (int64_t a = 0; a < g.kh; ++a) {
          const int64_t oh = ih * stride[0] - padding[0] + a * dilation[0];
          const bool in_h = oh >= 0 && oh < g.oh;
          for (int64_t b = 0; b < g.kw; ++b) {
            const int64_t ow = iw * stride[1] - padding[1] + b * dilation[1];
            *row++ = in_h && ow >= 0 && ow < g.ow ? src[oh * sh + ow * sw] : scalar_t(0);
          }
        }
      }
    }
  });
}

bool channels_last_weight(const at::Tensor& weight) {
  return !weight.is_contiguous() && weight.is_contiguous(at::MemoryFormat::ChannelsLast);
}

Geometry geometry(const at::Tensor& x, const at::Tensor& weight, int64_t oh, int64_t ow) {
  return {x.size(1),      x.size(2),      x.size(3), weight.size(1),
          weight.size(2), weight.size(3), oh,        ow,
          channels_last_weight(weight)};
}

// The weight [rows, c, kh, kw] as the [rows, columns] matrix of g's column order (a view when
// the weight is laid out in that order, as it is whenever g.hwc).
at::Tensor weight_matrix(const at::Tensor& weight, const Geometry& g) {
  return g.hwc ? weight.permute({0, 2, 3, 1}).reshape({weight.size(0), g.columns()})
               : weight.reshape({weight.size(0), g.columns()});
}

// out = a @ b (out's rows contiguous): the dense layers' gemm_into, genkern's small GEMM where it
// beats MKL's setup (the transposed convs of batch-1 decoders; the autoencoder's 64 -> 32
// channels 7x7 -> 14x14, 49 x 64 x 512: MKL 68 us at 2 threads), on its AVX2 kernels only. It
// packs b on every call: at least kMinPackedRows rows share it (a generator's 1x1 -> 4x4 head, 1 x
// 100 x 4096, took 141 us packed against MKL's 101), else ATen's mm.
constexpr int64_t kMinPackedRows = 32;
void mm_into(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  if (!avx2_kernels_enabled() || a.size(0) < kMinPackedRows)
    at::mm_out(out, a, b);
  else
    gemm_into(out, a, b);
}

// x's samples [n0, n0 + count) as rows [(n, ih, iw), ci] (a view for channels_last x; an NCHW
// x is transposed by layout_copy.h: ATen's strided copy took 12 of a batch-1 VAE decoder layer's
// 48 us).
at::Tensor rows_of(const at::Tensor& x, int64_t n0, int64_t count) {
  const at::Tensor part = to_channels_last(x.narrow(0, n0, count));
  return part.permute({0, 2, 3, 1}).reshape({-1, x.size(1)});
}

// The GEMMs on an im2col of t (the output gradient of a transposed conv, the input of a conv2d),
// over chunks of the n samples, for the transposed conv of geometry g with weight [g.ci, g.co,
// kh, kw]: out (when defined: [n, g.ci, g.h, g.w], any layout) = D @ weight^T (+ bias), one row
// per pixel; grad_w2 (when defined: [g.ci, g.columns()]) = the sum over chunks of src's rows^T D.
void im2col_gemms(const at::Tensor& t, const Geometry& g, int64_t n, const at::Tensor& weight,
                  const at::Tensor& bias, const std::vector<int64_t>& stride,
                  const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation,
                  at::Tensor& out, const at::Tensor& src, at::Tensor& grad_w2) {
  const at::Tensor w2 = weight_matrix(weight, g);
  const int64_t chunk = chunk_samples(g);
  const at::Tensor d = at::empty({std::min(chunk, n) * g.h * g.w, g.ld()}, t.options());
  for (int64_t n0 = 0; n0 < n; n0 += chunk) {
    const int64_t count = std::min(chunk, n - n0);
    const at::Tensor dc = d.narrow(0, 0, count * g.h * g.w).narrow(1, 0, g.columns());
    AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "conv_gemm_im2col", [&] {
      im2col<scalar_t>(t, n0, count, g, stride, padding, dilation, dc.data_ptr<scalar_t>());
    });
    if (out.defined()) {  // into a channels_last out directly, else through a copy
      const at::Tensor dst = out.narrow(0, n0, count).permute({0, 2, 3, 1});
      at::Tensor rows = dst.is_contiguous() ? dst.view({-1, g.ci}) : at::empty({0}, t.options());
      if (bias.defined())
        at::addmm_out(rows, bias, dc, w2.t());
      else
        at::mm_out(rows, dc, w2.t());
      if (!dst.is_contiguous()) dst.copy_(rows.view({count, g.h, g.w, g.ci}));
    }
    if (grad_w2.defined()) {
      const at::Tensor st = rows_of(src, n0, count).t();
      if (n0 == 0)
        at::mm_out(grad_w2, st, dc);
      else
        grad_w2.addmm_(st, dc);
    }
  }
}

// [rows, columns] (g's column order) as the weight's shape and memory format.
// (in fmt: conv_output_format(x, weight), ATen's layout for both gradients, whatever the output
// gradient's; found by a fuzz: they followed x's and the weight's own layouts)
at::Tensor as_weight(const at::Tensor& grad_w2, const at::Tensor& weight, const Geometry& g,
                     at::MemoryFormat fmt) {
  const at::Tensor w =
      g.hwc ? grad_w2.view({weight.size(0), g.kh, g.kw, weight.size(1)}).permute({0, 3, 1, 2})
            : grad_w2.view(weight.sizes());
  return w.suggest_memory_format() == fmt ? w : w.contiguous(fmt);
}

}  // namespace

void set_conv_gemm_mode(int64_t mode) {
  set_path_mode(g_mode, mode, "conv GEMM");
}

int64_t conv_gemm_mode() { return g_mode.load(); }

namespace {

// The rule, for the transposed conv of `in` channels over `pixels` input pixels (a conv2d is the
// transposed conv of its output: C_out channels over its output pixels).
bool gemm_pays(at::ScalarType dtype, int64_t groups, int64_t in, int64_t pixels, bool empty) {
  const int64_t mode = g_mode.load(std::memory_order_relaxed);
  if (mode == 0 || groups != 1 || empty) return false;
  if (mode == 2) return dtype == at::kFloat || dtype == at::kDouble;
  // measured (interleaved f+b, 2-core Xeon, k4 s2; benchmarks/README.md): a long inner dim over
  // few pixels. Wins: 384 and 512 channels over 2x2-4x4 (1.1-3x); losses: 256 over 4x4 (0.7-1.0x),
  // anything over 8x8 (0.5-0.9x). Its GEMMs are ATen's: where they run narrower vectors than
  // oneDNN's convs, it loses (2-core Zen 5, MKL's AVX2 code: D 256 -> 512 36.7 -> 73.2 ms, G 512
  // -> 256 41.8 -> 73.0)
  return blas_as_wide_as_onednn() && dtype == at::kFloat && in >= 384 && pixels <= 16;
}

}  // namespace

bool use_conv_gemm(const at::Tensor& x, const at::Tensor& weight, int64_t groups) {
  return x.dim() == 4 && gemm_pays(x.scalar_type(), groups, weight.size(0),
                                   x.size(2) * x.size(3), x.numel() == 0 || weight.numel() == 0);
}

bool use_conv2d_gemm(const at::Tensor& x, const at::Tensor& weight, int64_t groups,
                     int64_t out_pixels) {
  return x.dim() == 4 &&
         gemm_pays(x.scalar_type(), groups, weight.size(0), out_pixels,
                   x.numel() == 0 || weight.numel() == 0 || out_pixels == 0);
}

at::Tensor conv_transpose2d_gemm(const at::Tensor& x, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias,
                                 const std::vector<int64_t>& stride,
                                 const std::vector<int64_t>& padding,
                                 const std::vector<int64_t>& output_padding,
                                 const std::vector<int64_t>& dilation) {
  int64_t out[2];
  for (int i = 0; i < 2; ++i) {
    out[i] = transposed_output_size(x.size(i + 2), weight.size(i + 2), stride[i], padding[i],
                                    output_padding[i], dilation[i]);
  }
  const Geometry g = geometry(x, weight, out[0], out[1]);
  const int64_t n = x.size(0);
  // col2im writes NCHW, or NHWC in the hwc column order
  const auto written = g.hwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor y = at::empty({n, g.co, g.oh, g.ow}, x.options().memory_format(written));
  const at::Tensor w2 = weight_matrix(weight, g);
  const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  const Taps th = taps_of(g.oh, g.h, g.kh, stride[0], padding[0], dilation[0]);
  const Taps tw = taps_of(g.ow, g.w, g.kw, stride[1], padding[1], dilation[1]);
  const int64_t chunk = chunk_samples(g);
  const at::Tensor buffer = at::empty({std::min(chunk, n) * g.h * g.w, g.ld()}, x.options());
  for (int64_t n0 = 0; n0 < n; n0 += chunk) {
    const int64_t count = std::min(chunk, n - n0);
    at::Tensor cols = buffer.narrow(0, 0, count * g.h * g.w).narrow(1, 0, g.columns());
    mm_into(cols, rows_of(x, n0, count), w2);
    TORCH_INTERNAL_ASSERT(cols.stride(0) == g.ld() && cols.data_ptr() == buffer.data_ptr());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_transpose2d_gemm", [&] {
      col2im<scalar_t>(cols.data_ptr<scalar_t>(), b.defined() ? b.data_ptr<scalar_t>() : nullptr,
                       y.data_ptr<scalar_t>() + n0 * g.co * g.oh * g.ow, count, g, th, tw);
    });
  }
  const auto fmt = conv_output_format(x, weight);
  return fmt == written ? y : y.contiguous(fmt);
}

std::pair<at::Tensor, at::Tensor> conv_transpose2d_gemm_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
    const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
    const std::vector<int64_t>& dilation, bool need_x, bool need_w) {
  const Geometry g = geometry(x, weight, grad_y.size(2), grad_y.size(3));
  at::Tensor grad_x, grad_w2;
  const auto fmt = conv_output_format(x, weight);
  if (need_x) grad_x = at::empty(x.sizes(), x.options().memory_format(fmt));
  if (need_w) grad_w2 = at::empty({g.ci, g.columns()}, x.options());
  im2col_gemms(grad_y, g, x.size(0), weight, at::Tensor(), stride, padding, dilation, grad_x,
               x, grad_w2);
  return {grad_x, need_w ? as_weight(grad_w2, weight, g, fmt) : at::Tensor()};
}

at::Tensor conv2d_gemm(const at::Tensor& x, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias, const std::vector<int64_t>& stride,
                       const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation) {
  int64_t out[2];
  for (int i = 0; i < 2; ++i)
    out[i] =
        conv_output_size(x.size(i + 2), weight.size(i + 2), stride[i], padding[i], dilation[i]);
  // the transposed conv of the output: C_out channels over out[] pixels onto x's C_in x H x W
  const Geometry g{weight.size(0), out[0],         out[1],    weight.size(1), weight.size(2),
                   weight.size(3), x.size(2),      x.size(3), channels_last_weight(weight)};
  at::Tensor y = at::empty({x.size(0), g.ci, out[0], out[1]},
                           x.options().memory_format(conv_output_format(x, weight)));
  const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  at::Tensor none;
  im2col_gemms(x, g, x.size(0), weight, b, stride, padding, dilation, y, at::Tensor(), none);
  return y;
}

std::pair<at::Tensor, at::Tensor> conv2d_gemm_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
    const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
    const std::vector<int64_t>& dilation, bool need_x, bool need_w) {
  at::Tensor grad_x, grad_w2;
  if (need_x) {  // the transposed conv of grad_y onto x's size (any output_padding: ours)
    grad_x = conv_transpose2d_gemm(grad_y, weight, std::nullopt, stride, padding,
                                   input_grad_output_padding(grad_y, x, weight, stride, padding,
                                                             dilation),
                                   dilation)
                 .contiguous(conv_output_format(x, weight));
  }
  const Geometry g = geometry(grad_y, weight, x.size(2), x.size(3));
  if (need_w) {
    grad_w2 = at::empty({g.ci, g.columns()}, x.options());
    at::Tensor none;
    im2col_gemms(x, g, x.size(0), weight, at::Tensor(), stride, padding, dilation, none, grad_y,
                 grad_w2);
  }
  return {grad_x,
          need_w ? as_weight(grad_w2, weight, g, conv_output_format(x, weight)) : at::Tensor()};
}

}  // namespace genkern::cpu
