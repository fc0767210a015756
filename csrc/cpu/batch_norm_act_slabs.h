// The loops of batch_norm's NCHW path, each n seen as a [C, L] slab (L = H*W), and of its backward
// over channels_last rows of C: torch-free ranges that the OpenMP glue in batch_norm_act.cpp
// calls. Compiled twice, each in its own translation unit: as baseline code
// (batch_norm_act_slabs_base.cpp) and under `#pragma GCC target("avx2")` (_avx2.cpp; chosen at run
// time), each time with GK_SLABS_NS naming the namespace; batch_norm_act.cpp includes both to
// declare them (GK_SLAB_INSTANCES(extern)). No FMA: both builds round alike and, as the lanes are
// explicit, give the same bits.
//
// Reductions keep kLanes partial sums per channel in `acc[c * kLanes + j]` (opmath), added into
// row by row: no horizontal sum per (n, c) row, which for L = 16 would cost more than the row.
// No include guard, on purpose; the headers it needs (batch_norm_act_slab_list.h) are included
// first, outside the AVX2 pragma.

namespace genkern::cpu::GK_SLABS_NS {

// act's backward at one element: from the saved tensor (R = kSaved: s is its value; kOutput: s
// is y, act's output, read in x's place) or from the recomputed pre-activation (kRecompute: s is
// x's value).
template <Activation A, int R, typename opmath_t>
inline opmath_t grad_in(opmath_t gy, opmath_t s, opmath_t m, opmath_t zs, opmath_t zb,
                        opmath_t slope) {
  if constexpr (A == Activation::kIdentity) {
    return gy;
  } else {
    if constexpr (R == kRecompute) s = (s - m) * zs + zb;
    return act_backward<A, opmath_t>(gy, s, slope);
  }
}

// x - mean at one element (a value or a vector): from x, or (kOutput) from the leaky_relu output
// y read in x's place: ((y > 0 ? y : y * (1 / slope)) - b) * k, with m = b (the batch norm's
// bias) and zs = k = 1 / (w * invstd) passed in mean's and zscale's places.
template <int R, typename T, typename opmath_t>
inline T centered(const T& v, opmath_t m, opmath_t zs, opmath_t inv_slope) {
  if constexpr (R == kOutput) {
    return ((v > opmath_t(0) ? v : v * inv_slope) - m) * zs;
  } else {
    return v - m;
  }
}

// kLanes opmath values as kLanes / W GCC vectors of W = 32 bytes (AVX2 registers; pairs of SSE2
// ones): accumulators held in registers over a row.
template <typename T>
struct Lanes {
  static constexpr int W = 32 / sizeof(T), N = kLanes / W;
  typedef T vec __attribute__((vector_size(32)));
  typedef T uvec __attribute__((vector_size(32), aligned(alignof(T)), may_alias));  // unaligned
  vec v[N];
  void load(const T* p) {
    for (int k = 0; k < N; ++k) v[k] = *reinterpret_cast<const uvec*>(p + k * W);
  }
  template <typename S>
  void load(const S* p) {
    for (int k = 0; k < N; ++k) {
      vec t = {};  // built whole: element stores into v[k] read it as maybe-uninitialized (GCC)
      for (int j = 0; j < W; ++j) t[j] = T(p[k * W + j]);
      v[k] = t;
    }
  }
  void store(T* p) const {
    for (int k = 0; k < N; ++k) *reinterpret_cast<uvec*>(p + k * W) = v[k];
  }
};

// g = grad_in(g, s) on one vector (by reference: no vector-ABI question between the builds):
// relu and leaky_relu as selects, other activations element by element.
template <Activation A, int R, typename opmath_t, typename V>
inline void grad_in_lanes(V& g, const V& saved, opmath_t m, opmath_t zs, opmath_t zb,
                          opmath_t slope) {
  if constexpr (A != Activation::kIdentity) {
    V s = saved;
    if constexpr (R == kRecompute) s = (s - m) * zs + zb;
    if constexpr (A == Activation::kRelu) {
      g = s <= opmath_t(0) ? V{} : g;  // NaN s passes grad, as act_backward
    } else if constexpr (A == Activation::kLeakyRelu) {
      const V neg = g * slope;
      g = s > opmath_t(0) ? g : neg;
    } else {
      for (int j = 0; j < int(sizeof(V) / sizeof(opmath_t)); ++j)
        g[j] = act_backward<A, opmath_t>(g[j], s[j], slope);
    }
  }
}

// acc1[c, j] += sum(x - shift[c]), acc2[c, j] += sum((x - shift[c])^2) over the slabs [n0, n1),
// slab by slab (in memory order): each row adds into its channel's lanes, held in registers over
// the row.
template <typename scalar_t, typename opmath_t>
void stats(const scalar_t* xp, int64_t C, int64_t L, int64_t n0, int64_t n1,
           const opmath_t* shift, opmath_t* acc1, opmath_t* acc2) {
  using V = Lanes<opmath_t>;
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t c = 0; c < C; ++c) {
      const scalar_t* q = xp + (n * C + c) * L;
      const opmath_t k = shift[c];
      opmath_t* p1 = acc1 + c * kLanes;
      opmath_t* p2 = acc2 + c * kLanes;
      V a, b;
      a.load(p1);
      b.load(p2);
      int64_t i = 0;
      for (; i + kLanes <= L; i += kLanes) {
        V x;
        x.load(q + i);
        for (int v = 0; v < V::N; ++v) {
          const auto d = x.v[v] - k;
          a.v[v] += d;
          b.v[v] += d * d;
        }
      }
      a.store(p1);
      b.store(p2);
      for (int j = 0; i < L; ++i, ++j) {  // the tail (L % kLanes) in the first lanes
        const opmath_t d = opmath_t(q[i]) - k;
        p1[j] += d;
        p2[j] += d * d;
      }
    }
}

// y = act((x - center[c]) * scale[c] + shift[c]) over the slabs [n0, n1); pre (if not null) gets
// the pre-activation.
template <Activation A, typename scalar_t, typename opmath_t>
void affine(const scalar_t* xp, scalar_t* yp, scalar_t* pre, int64_t C, int64_t L, int64_t n0,
            int64_t n1, const opmath_t* center, const opmath_t* scale, const opmath_t* shift,
            opmath_t slope) {
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t c = 0; c < C; ++c) {
      const int64_t base = (n * C + c) * L;
      const scalar_t* xr = xp + base;
      scalar_t* yr = yp + base;
      const opmath_t m = center[c], a = scale[c], b = shift[c];
      if (pre) {
        scalar_t* pr = pre + base;
#pragma omp simd
        for (int64_t i = 0; i < L; ++i) {
          const opmath_t z = (opmath_t(xr[i]) - m) * a + b;
          pr[i] = scalar_t(z);
          yr[i] = scalar_t(act_forward<A, opmath_t>(z, slope));
        }
      } else {
#pragma omp simd
        for (int64_t i = 0; i < L; ++i)
          yr[i] = scalar_t(act_forward<A, opmath_t>((opmath_t(xr[i]) - m) * a + b, slope));
      }
    }
}

// accg[c, j] += sum(g), accgx[c, j] += sum(g * (x - mean[c])) over the slabs [n0, n1), g = act's
// backward of grad_y (s: the saved tensor, for kSaved); slab by slab, as stats.
template <Activation A, int R, typename scalar_t, typename opmath_t>
void grad_sums(const scalar_t* gyp, const scalar_t* sp, const scalar_t* xp, int64_t C, int64_t L,
               int64_t n0, int64_t n1, const opmath_t* mean, const opmath_t* zscale,
               const opmath_t* zshift, opmath_t slope, opmath_t* accg, opmath_t* accgx) {
  using V = Lanes<opmath_t>;
  const scalar_t* src = R != kSaved || sp == nullptr ? xp : sp;  // never null: no test per element
  const opmath_t inv_slope = opmath_t(1) / slope;  // kOutput's y -> z
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t c = 0; c < C; ++c) {
      const int64_t base = (n * C + c) * L;
      const scalar_t* gr = gyp + base;
      const scalar_t* xr = xp + base;
      const scalar_t* sr = src + base;
      const opmath_t m = mean[c], zs = zscale[c], zb = zshift[c];
      opmath_t* pa = accg + c * kLanes;
      opmath_t* pb = accgx + c * kLanes;
      V a, b;
      a.load(pa);
      b.load(pb);
      int64_t i = 0;
      for (; i + kLanes <= L; i += kLanes) {
        V xv, g, sv;
        xv.load(xr + i);
        g.load(gr + i);
        if constexpr (R == kSaved) sv.load(sr + i);
        for (int v = 0; v < V::N; ++v) {
          grad_in_lanes<A, R, opmath_t>(g.v[v], R == kSaved ? sv.v[v] : xv.v[v], m, zs, zb, slope);
          a.v[v] += g.v[v];
          b.v[v] += g.v[v] * centered<R>(xv.v[v], m, zs, inv_slope);
        }
      }
      a.store(pa);
      b.store(pb);
      for (int j = 0; i < L; ++i, ++j) {
        const opmath_t g =
            grad_in<A, R, opmath_t>(opmath_t(gr[i]), opmath_t(sr[i]), m, zs, zb, slope);
        pa[j] += g;
        pb[j] += g * centered<R>(opmath_t(xr[i]), m, zs, inv_slope);
      }
    }
}

// gx = ka * (g + kb * (x - mean) + kc) (kTrain) or ka * g over the slabs [n0, n1).
template <Activation A, int R, bool kTrain, typename scalar_t, typename opmath_t>
void grad_apply(const scalar_t* gyp, const scalar_t* sp, const scalar_t* xp, scalar_t* gxp,
                int64_t C, int64_t L, int64_t n0, int64_t n1, const opmath_t* mean,
                const opmath_t* zscale, const opmath_t* zshift, const opmath_t* ka,
                const opmath_t* kb, const opmath_t* kc, opmath_t slope) {
  const scalar_t* src = R != kSaved || sp == nullptr ? xp : sp;  // never null: no test per element
  const opmath_t inv_slope = opmath_t(1) / slope;  // kOutput's y -> z
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t c = 0; c < C; ++c) {
      const int64_t base = (n * C + c) * L;
      const scalar_t* gr = gyp + base;
      const scalar_t* xr = xp + base;
      const scalar_t* sr = src + base;
      scalar_t* out = gxp + base;
      const opmath_t m = mean[c], zs = zscale[c], zb = zshift[c], a = ka[c], b = kb[c], d = kc[c];
#pragma omp simd
      for (int64_t i = 0; i < L; ++i) {
        const opmath_t g =
            grad_in<A, R, opmath_t>(opmath_t(gr[i]), opmath_t(sr[i]), m, zs, zb, slope);
        if constexpr (kTrain) {
          out[i] = scalar_t(a * (g + b * centered<R>(opmath_t(xr[i]), m, zs, inv_slope) + d));
        } else {
          out[i] = scalar_t(a * g);
        }
      }
    }
}

// Rows of C (channels_last: one row per pixel), rows [r0, r1): accg[c] += g, accgx[c] += g * (x -
// mean[c]), each channel's sum over the rows in row order, vectorized across the row's channels.
template <Activation A, int R, typename scalar_t, typename opmath_t>
void row_grad_sums(const scalar_t* __restrict__ gyp, const scalar_t* __restrict__ sp,
                   const scalar_t* __restrict__ xp, int64_t C, int64_t r0, int64_t r1,
                   const opmath_t* __restrict__ mean, const opmath_t* __restrict__ zscale,
                   const opmath_t* __restrict__ zshift, opmath_t slope,
                   opmath_t* __restrict__ accg, opmath_t* __restrict__ accgx) {
  const scalar_t* src = R != kSaved || sp == nullptr ? xp : sp;  // never null: no test per element
  const opmath_t inv_slope = opmath_t(1) / slope;  // kOutput's y -> z
  for (int64_t r = r0; r < r1; ++r) {
    const scalar_t* gr = gyp + r * C;
    const scalar_t* xr = xp + r * C;
    const scalar_t* sr = src + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const opmath_t g = grad_in<A, R, opmath_t>(opmath_t(gr[c]), opmath_t(sr[c]), mean[c],
                                                 zscale[c], zshift[c], slope);
      accg[c] += g;
      accgx[c] += g * centered<R>(opmath_t(xr[c]), mean[c], zscale[c], inv_slope);
    }
  }
}

// gx = ka * (g + kb * (x - mean) + kc) (kTrain) or ka * g over rows [r0, r1) of C.
template <Activation A, int R, bool kTrain, typename scalar_t, typename opmath_t>
void row_grad_apply(const scalar_t* __restrict__ gyp, const scalar_t* __restrict__ sp,
                    const scalar_t* __restrict__ xp, scalar_t* __restrict__ gxp, int64_t C,
                    int64_t r0, int64_t r1, const opmath_t* __restrict__ mean,
                    const opmath_t* __restrict__ zscale, const opmath_t* __restrict__ zshift,
                    const opmath_t* __restrict__ ka, const opmath_t* __restrict__ kb,
                    const opmath_t* __restrict__ kc, opmath_t slope) {
  const scalar_t* src = R != kSaved || sp == nullptr ? xp : sp;
  const opmath_t inv_slope = opmath_t(1) / slope;  // kOutput's y -> z
  for (int64_t r = r0; r < r1; ++r) {
    const scalar_t* gr = gyp + r * C;
    const scalar_t* xr = xp + r * C;
    const scalar_t* sr = src + r * C;
    scalar_t* out = gxp + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const opmath_t g = grad_in<A, R, opmath_t>(opmath_t(gr[c]), opmath_t(sr[c]), mean[c],
                                                 zscale[c], zshift[c], slope);
      if constexpr (kTrain) {
        out[c] = scalar_t(ka[c] * (g + kb[c] * centered<R>(opmath_t(xr[c]), mean[c], zscale[c],
                                                            inv_slope) +
                                   kc[c]));
      } else {
        out[c] = scalar_t(ka[c] * g);
      }
    }
  }
}

}  // namespace genkern::cpu::GK_SLABS_NS
