// The loops of batch_norm's NCHW path, each n seen as a [C, L] slab (L = H*W): torch-free ranges
// over n that the OpenMP glue in batch_norm_act.cpp calls. Included twice by batch_norm_act.cpp:
// once as baseline code and once under `#pragma GCC target("avx2")` (runtime dispatch), each time
// with GK_SLABS_NS naming the namespace. No FMA: both builds round alike and, as the lanes are
// explicit, give the same bits.
//
// Reductions keep kLanes partial sums per channel in `acc[c * kLanes + j]` (opmath), added into
// row by row: no horizontal sum per (n, c) row, which for L = 16 would cost more than the row.
// No include guard, on purpose; the headers it needs are included by batch_norm_act.cpp first.

namespace GK_SLABS_NS {

// act's backward at one element: from the saved tensor (R false: s is its value) or from the
// recomputed pre-activation (R true: s is x's value).
template <Activation A, bool R, typename opmath_t>
inline opmath_t grad_in(opmath_t gy, opmath_t s, opmath_t m, opmath_t zs, opmath_t zb,
                        opmath_t slope) {
  if constexpr (A == Activation::kIdentity) {
    return gy;
  } else {
    if constexpr (R) s = (s - m) * zs + zb;
    return act_backward<A, opmath_t>(gy, s, slope);
  }
}

// acc1[c, j] += sum(x - shift[c]), acc2[c, j] += sum((x - shift[c])^2) over the slabs [n0, n1).
template <typename scalar_t, typename opmath_t>
void stats(const scalar_t* xp, int64_t C, int64_t L, int64_t n0, int64_t n1,
           const opmath_t* shift, opmath_t* acc1, opmath_t* acc2) {
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t c = 0; c < C; ++c) {
      const scalar_t* q = xp + (n * C + c) * L;
      const opmath_t k = shift[c];
      opmath_t a[kLanes] = {}, b[kLanes] = {};
      int64_t i = 0;
      for (; i + kLanes <= L; i += kLanes)
#pragma omp simd
        for (int j = 0; j < kLanes; ++j) {
          const opmath_t d = opmath_t(q[i + j]) - k;
          a[j] += d;
          b[j] += d * d;
        }
      for (int j = 0; i < L; ++i, ++j) {  // the tail (L % kLanes) in the first lanes
        const opmath_t d = opmath_t(q[i]) - k;
        a[j] += d;
        b[j] += d * d;
      }
      opmath_t* p1 = acc1 + c * kLanes;
      opmath_t* p2 = acc2 + c * kLanes;
#pragma omp simd
      for (int j = 0; j < kLanes; ++j) {
        p1[j] += a[j];
        p2[j] += b[j];
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
// backward of grad_y (s: the saved tensor, unless R).
template <Activation A, bool R, typename scalar_t, typename opmath_t>
void grad_sums(const scalar_t* gyp, const scalar_t* sp, const scalar_t* xp, int64_t C, int64_t L,
               int64_t n0, int64_t n1, const opmath_t* mean, const opmath_t* zscale,
               const opmath_t* zshift, opmath_t slope, opmath_t* accg, opmath_t* accgx) {
  const scalar_t* src = R || sp == nullptr ? xp : sp;  // never null: no test per element
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t c = 0; c < C; ++c) {
      const int64_t base = (n * C + c) * L;
      const scalar_t* gr = gyp + base;
      const scalar_t* xr = xp + base;
      const scalar_t* sr = src + base;
      const opmath_t m = mean[c], zs = zscale[c], zb = zshift[c];
      opmath_t a[kLanes] = {}, b[kLanes] = {};
      int64_t i = 0;
      for (; i + kLanes <= L; i += kLanes)
#pragma omp simd
        for (int j = 0; j < kLanes; ++j) {
          const opmath_t g =
              grad_in<A, R, opmath_t>(opmath_t(gr[i + j]), opmath_t(sr[i + j]), m, zs, zb, slope);
          a[j] += g;
          b[j] += g * (opmath_t(xr[i + j]) - m);
        }
      for (int j = 0; i < L; ++i, ++j) {
        const opmath_t g =
            grad_in<A, R, opmath_t>(opmath_t(gr[i]), opmath_t(sr[i]), m, zs, zb, slope);
        a[j] += g;
        b[j] += g * (opmath_t(xr[i]) - m);
      }
      opmath_t* pa = accg + c * kLanes;
      opmath_t* pb = accgx + c * kLanes;
#pragma omp simd
      for (int j = 0; j < kLanes; ++j) {
        pa[j] += a[j];
        pb[j] += b[j];
      }
    }
}

// gx = ka * (g + kb * (x - mean) + kc) (kTrain) or ka * g over the slabs [n0, n1).
template <Activation A, bool R, bool kTrain, typename scalar_t, typename opmath_t>
void grad_apply(const scalar_t* gyp, const scalar_t* sp, const scalar_t* xp, scalar_t* gxp,
                int64_t C, int64_t L, int64_t n0, int64_t n1, const opmath_t* mean,
                const opmath_t* zscale, const opmath_t* zshift, const opmath_t* ka,
                const opmath_t* kb, const opmath_t* kc, opmath_t slope) {
  const scalar_t* src = R || sp == nullptr ? xp : sp;  // never null: no test per element
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
          out[i] = scalar_t(a * (g + b * (opmath_t(xr[i]) - m) + d));
        } else {
          out[i] = scalar_t(a * g);
        }
      }
    }
}

}  // namespace GK_SLABS_NS
