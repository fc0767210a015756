// The geometry of stem_conv.h's kernels, shared by their AVX-512 (stem_conv.cpp) and AVX2
// (stem_conv_avx2.cpp) builds: the conv over a zero-padded NHWC input, the tiles of output
// pixels, the weight gradient's chunks of pixels and their loop. No vector code: the tile
// kernels come in as callables.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "genkern/activation.h"
#include "layout_copy.h"  // transpose_floats

// GCC on x86-64: where the AVX-512 and AVX2 kernels are built (chosen at run time)
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define GK_STEM_X86 1
#else
#define GK_STEM_X86 0
#endif

namespace genkern::cpu::stem_detail {

constexpr int kPanel = 64;              // output channels per pass: four zmm
// Weight gradient: pixels go in chunks of about kChunkPixels (whole samples, or bands of output
// rows of one sample), each padding its own input rows into a small buffer; the chunks' sums are
// added into kGroups partial sums, each over a fixed run of chunks in order (the same bits for any
// thread count, and a few hundred KB of partials whatever the batch).
constexpr int64_t kChunkPixels = 512;
constexpr int64_t kGroups = 16;

// The conv's shape over the zero-padded NHWC input xp [n, hp, wp, cin]. Taps k run over
// (kh, kw, cin), the memory order of a channels_last weight.
struct Stem {
  int64_t n, cin, hp, wp, cout, kh, kw, oh, ow, sh, sw, dh, dw;
  int64_t taps() const { return cin * kh * kw; }
  int64_t pixels() const { return n * oh * ow; }
  int64_t panels() const { return (cout + kPanel - 1) / kPanel; }  // passes of kPanel channels
  // Where the windows of output pixels p, p + 1, ... start in xp: counters, no divisions.
  struct Walk {
    const Stem& s;
    int64_t b, oh, ow;
    Walk(const Stem& st, int64_t p)
        : s(st), b(p / (st.oh * st.ow)), oh(p / st.ow % st.oh), ow(p % st.ow) {}
    int64_t next() {
      const int64_t o = ((b * s.hp + oh * s.sh) * s.wp + ow * s.sw) * s.cin;
      if (++ow == s.ow) {
        ow = 0;
        if (++oh == s.oh) oh = 0, ++b;
      }
      return o;
    }
  };
  std::vector<int64_t> tap_offsets() const {
    std::vector<int64_t> off;
    off.reserve(taps());
    for (int64_t i = 0; i < kh; ++i)
      for (int64_t j = 0; j < kw; ++j)
        for (int64_t c = 0; c < cin; ++c) off.push_back((i * dh * wp + j * dw) * cin + c);
    return off;
  }
};

// Chunk c of the weight gradient: samples [n0, n1), output rows [r0, r1) of each (every row when
// n1 - n0 > 1), the padded input rows [h0, h1) they read.
struct Chunk {
  int64_t n0, n1, r0, r1, h0, h1;
};

struct Chunking {
  int64_t per, bands, rows_per, count;  // samples per chunk or bands per sample, chunks
  explicit Chunking(const Stem& s) {
    const int64_t plane = s.oh * s.ow;
    per = plane <= kChunkPixels ? std::max<int64_t>(1, kChunkPixels / std::max<int64_t>(plane, 1))
                                : 1;
    rows_per = plane <= kChunkPixels ? s.oh : std::max<int64_t>(1, kChunkPixels / s.ow);
    bands = (s.oh + rows_per - 1) / rows_per;
    count = plane <= kChunkPixels ? (s.n + per - 1) / per : s.n * bands;
  }
  int64_t groups() const { return std::min(kGroups, count); }  // partial sums
  Chunk operator()(const Stem& s, int64_t c) const {
    Chunk k{};
    if (bands == 1) {
      k.n0 = c * per, k.n1 = std::min(s.n, k.n0 + per), k.r0 = 0, k.r1 = s.oh;
      k.h0 = 0, k.h1 = s.hp;
      return k;
    }
    k.n0 = c / bands, k.n1 = k.n0 + 1, k.r0 = c % bands * rows_per;
    k.r1 = std::min(s.oh, k.r0 + rows_per);
    k.h0 = k.r0 * s.sh, k.h1 = (k.r1 - 1) * s.sh + (s.kh - 1) * s.dh + 1;
    return k;
  }
};

// x [N, C, H, W] (any layout) read as its zero-padded NHWC copy [N, H + 2 ph, W + 2 pw, C]:
// row(n, h, dst) writes row h of sample n of that copy.
struct Padded {
  const float* src;
  int64_t sn, sc, sh, sw, C, H, W, ph, pw;
  Padded(const at::Tensor& x, int64_t ph_, int64_t pw_)
      : src(x.data_ptr<float>()), sn(x.stride(0)), sc(x.stride(1)), sh(x.stride(2)),
        sw(x.stride(3)), C(x.size(1)), H(x.size(2)), W(x.size(3)), ph(ph_), pw(pw_) {}
  int64_t hp() const { return H + 2 * ph; }
  int64_t wp() const { return W + 2 * pw; }
  int64_t sample_floats() const { return hp() * wp() * C; }
  void row(int64_t n, int64_t h, float* dst) const {
    const int64_t ih = h - ph;
    if (ih < 0 || ih >= H) {
      std::fill(dst, dst + wp() * C, 0.f);
      return;
    }
    std::fill(dst, dst + pw * C, 0.f);
    std::fill(dst + (pw + W) * C, dst + wp() * C, 0.f);
    const float* in = src + n * sn + ih * sh;
    float* out = dst + pw * C;
    if ((sc == 1 || C == 1) && sw == C) {  // channels_last rows (or one channel): a copy
      std::copy(in, in + W * C, out);
    } else if (sw == 1) {  // NCHW rows: each channel's run read in order
      for (int64_t c = 0; c < C; ++c)
        for (int64_t w = 0; w < W; ++w) out[w * C + c] = in[c * sc + w];
    } else {
      for (int64_t w = 0; w < W; ++w)
        for (int64_t c = 0; c < C; ++c) out[w * C + c] = in[w * sw + c * sc];
    }
  }
};

// tile(px, rows, out) for the tiles of R output pixels p0, ..., p0 + rows - 1 (rows < R only in
// the last of a run), px[r] the start of pixel r's window in xs (the last one repeated past
// `rows`), out where the tile writes its rows of C_out floats. channels_last y: at y itself, the
// tiles running on across samples, `grain` tiles or more per task. NCHW y (nchw): into a band of
// about kBandFloats in cache, a task's band of pixels of one sample at a time, then transposed
// out to y's channel planes (C_out runs of the band's pixels): no channels_last copy of y.
constexpr int64_t kBandFloats = 8192;

template <int R, typename Tile>
void for_each_pixel_tile(const Stem& s, const float* xs, int64_t grain, float* y, bool nchw,
                         Tile&& tile) {
  const auto run = [&](int64_t p0, int64_t count, float* out) {  // count pixels from p0
    const float* px[R];
    Stem::Walk walk(s, p0);
    for (int64_t t = 0; t < count; t += R) {
      const int rows = static_cast<int>(std::min<int64_t>(R, count - t));
      for (int r = 0; r < rows; ++r) px[r] = xs + walk.next();
      for (int r = rows; r < R; ++r) px[r] = px[rows - 1];
      tile(px, rows, out + t * s.cout);
    }
  };
  const int64_t M = s.pixels(), plane = s.oh * s.ow;
  if (!nchw) {
    const int64_t tiles = (M + R - 1) / R;
    at::parallel_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
      run(t0 * R, std::min(M, t1 * R) - t0 * R, y + t0 * R * s.cout);
    });
    return;
  }
  // whole tiles and whole 16-float lines of each plane (the transpose's 8 x 8 register tiles,
  // and no line shared by two tasks' bands)
  constexpr int64_t unit = R % 16 == 0 ? R : R % 8 == 0 ? 2 * R : R % 4 == 0 ? 4 * R : 8 * R;
  const int64_t band = unit * std::max<int64_t>(1, kBandFloats / (unit * s.cout));
  const bool stream = stream_output(M * s.cout * int64_t{sizeof(float)});
  const int64_t bands = (plane + band - 1) / band;
  at::parallel_for(0, s.n * bands, std::max<int64_t>(1, grain * R / band),
                   [&](int64_t b0, int64_t b1) {
    std::vector<float> scratch(band * s.cout);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n = b / bands, q0 = b % bands * band, count = std::min(band, plane - q0);
      run(n * plane + q0, count, scratch.data());
      transpose_floats(scratch.data(), s.cout, y + n * s.cout * plane + q0, plane, count,
                       s.cout, stream);
    }
  });
}

// b[i] = act_backward(g[i], sv[i]) for i < n (sv null: nothing saved), in a loop the compiler
// vectorizes (the pointers never alias)
template <Activation A>
void act_backward_rows(const float* __restrict g, const float* __restrict sv,
                       float* __restrict b, int64_t n, float slope) {
  if (sv == nullptr) {
    for (int64_t i = 0; i < n; ++i) b[i] = act_backward<A, float>(g[i], 0.f, slope);
  } else {
    for (int64_t i = 0; i < n; ++i) b[i] = act_backward<A, float>(g[i], sv[i], slope);
  }
}

// The weight gradient: partial[grp] = the sums of chunk group grp for every tap (rows of
// `width` floats, C_out rounded up to kPanel) and at row `taps` its bias sums when need_bias.
// chunk_sums(xs, org, count, off, g, out) writes one chunk's sums to out: xs its padded input
// rows, org the window origins of its `count` pixels in them, off the taps' offsets, g =
// act'(.) * grad_y (rows of C_out), made chunk by chunk in a buffer that stays in cache (grad_y
// itself for identity, when channels_last). saved: what act_backward reads, or null. gy and
// saved are channels_last, or with nchw both NCHW-contiguous: then each chunk's rows come by
// transposing its runs of each channel plane (no channels_last copy of grad_y).
template <Activation A, typename ChunkSums>
void weight_grad_chunks(const Stem& s, const Padded& pad, const float* gy, const float* saved,
                        bool nchw, float slope, bool need_bias, float* partial,
                        ChunkSums&& chunk_sums) {
  const std::vector<int64_t> off = s.tap_offsets();
  const Chunking chunking(s);
  const int64_t taps = s.taps(), plane = s.oh * s.ow, rows = taps + need_bias;
  const int64_t groups = chunking.groups(), width = s.panels() * kPanel;
  const int64_t most = chunking.bands == 1 ? chunking.per * plane : chunking.rows_per * s.ow;
  const int64_t band_rows_max = (chunking.rows_per - 1) * s.sh + (s.kh - 1) * s.dh + 1;
  const int64_t band_floats = chunking.bands == 1 ? chunking.per * pad.sample_floats()
                                                  : band_rows_max * pad.wp() * pad.C;
  const bool in_place = A == Activation::kIdentity && !nchw;  // g is grad_y
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    std::vector<int64_t> org(most);
    std::vector<float> buffer(in_place ? 0 : most * s.cout);  // g of one chunk
    // with nchw, the chunk's grad_y and saved as rows of C_out
    std::vector<float> gy_rows(nchw ? most * s.cout : 0);
    std::vector<float> saved_rows(nchw && saved != nullptr ? most * s.cout : 0);
    std::vector<float> padded(band_floats);                   // x of one chunk
    std::vector<float> sums(rows * width);                    // one chunk's sums
    const float* xs = padded.data();
    for (int64_t grp = g0; grp < g1; ++grp) {
      float* part = partial + grp * rows * width;
      std::fill(part, part + rows * width, 0.f);
      const int64_t c_end = (grp + 1) * chunking.count / groups;
      for (int64_t c = grp * chunking.count / groups; c < c_end; ++c) {
        const Chunk k = chunking(s, c);
        const int64_t p0 = k.n0 * plane + k.r0 * s.ow;
        const int64_t count = (k.n1 - k.n0 - 1) * plane + (k.r1 - k.r0) * s.ow;
        const int64_t band_rows = k.h1 - k.h0, row_floats = pad.wp() * pad.C;
        for (int64_t n = k.n0; n < k.n1; ++n)
          for (int64_t h = k.h0; h < k.h1; ++h)
            pad.row(n, h, padded.data() + ((n - k.n0) * band_rows + h - k.h0) * row_floats);
        // window origins in the chunk's padded rows
        const int64_t base = (k.n0 * s.hp + k.h0) * s.wp * s.cin;
        Stem::Walk walk(s, p0);
        for (int64_t p = 0; p < count; ++p) org[p] = walk.next() - base;
        const float* g = gy + p0 * s.cout;
        const float* sv = saved != nullptr ? saved + p0 * s.cout : nullptr;
        if (nchw) {  // each sample's run of pixels [q0, q0 + run) of every channel plane
          const int64_t run = (k.r1 - k.r0) * s.ow, q0 = k.r0 * s.ow;
          for (int64_t n = k.n0; n < k.n1; ++n) {
            const int64_t from = n * s.cout * plane + q0, to = (n - k.n0) * run * s.cout;
            transpose_floats(gy + from, plane, gy_rows.data() + to, s.cout, s.cout, run);
            if (sv != nullptr)
              transpose_floats(saved + from, plane, saved_rows.data() + to, s.cout, s.cout, run);
          }
          g = gy_rows.data();
          sv = sv != nullptr ? saved_rows.data() : nullptr;
        }
        if constexpr (A != Activation::kIdentity) {
          act_backward_rows<A>(g, sv, buffer.data(), count * s.cout, slope);
          g = buffer.data();
        }
        chunk_sums(xs, org.data(), count, off.data(), g, sums.data());
        for (int64_t i = 0; i < rows * width; ++i) part[i] += sums[i];
      }
    }
  });
}

}  // namespace genkern::cpu::stem_detail
