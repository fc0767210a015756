// Loss math, written once for C++ host code and CUDA device code: the per-element value and
// derivative of every term of the GAN losses and of the VAE loss.
//
// A GAN loss is a sum of means of per-element "terms" (discriminator: real term + fake term;
// generator: one fake term). The Python mirror of the ids is genkern/ops/losses.py, the Triton
// mirror genkern/triton/losses.py. NaN propagates through every value and (as torch's autograd
// does) through every derivative that is not a hard 0/1 of a hinge.
#pragma once

#include <cmath>
#include <cstdint>

#include "genkern/activation.h"  // GK_HOST_DEVICE

namespace genkern {

using std::fabs;
using std::log;
using std::log1p;

enum class LossTerm : int {
  kSoftplusNeg = 0,  // softplus(-x)      bce real / bce generator (non-saturating)
  kSoftplusPos = 1,  // softplus(x)       bce fake
  kHingeReal = 2,    // relu(1 - x)
  kHingeFake = 3,    // relu(1 + x)
  kNeg = 4,          // -x                wgan real, wgan/hinge generator
  kPos = 5,          // x                 wgan fake
  kSqOne = 6,        // 0.5 * (x - 1)^2   lsgan real / generator
  kSqZero = 7,       // 0.5 * x^2         lsgan fake
};
constexpr int kNumLossTerms = 8;

enum class ReconLoss : int { kBceLogits = 0, kBce = 1, kMse = 2 };

// log1p(e) for e in [0, 1]. On the device and for double the math library's; for float on the
// host a polynomial the compiler vectorizes (no range reduction, no division): e + e (e Q(e)),
// Q a relative-minimax fit of (log1p(e) / e - 1) / e of degree 8 (coefficients refitted one by
// one after rounding to float; Estrin's scheme), the correction e Q(e) in [-0.31, 0] added by one
// fused multiply-add. Against float64 over 6M points of x: 1.66 ulp at most for
// log1p(exp(-|x|)) + max(x, 0) (Cephes' log of u = 1 + e, rounded, and its correction: 1.91),
// mean relative error -1.4e-11; the forward of softplus over 1M logits 19% faster on a Zen 5.
template <typename T>
GK_HOST_DEVICE T log1p_unit(T e) {
  return log1p(e);
}
#if !defined(__CUDA_ARCH__)
namespace detail {

// k ln 2 + log1p(f) for f in [sqrt(1/2) - 1, sqrt(2) - 1] (Cephes logf after its reduction).
inline float log_reduced(float k, float f) {
  const float z = f * f, z2 = z * z;
  const float q01 = 3.3333331174e-1f - 2.4999993993e-1f * f;
  const float q23 = 2.0000714765e-1f - 1.6668057665e-1f * f;
  const float q45 = 1.4249322787e-1f - 1.2420140846e-1f * f;
  const float q67 = 1.1676998740e-1f - 1.1514610310e-1f * f;
  const float p = ((q01 + q23 * z) + (q45 + q67 * z) * z2) + 7.0376836292e-2f * (z2 * z2);
  // Cephes sums p f^3 + k ln2_lo - z / 2, then f, then k ln2_hi; the terms that do not wait for p
  // are summed beside it here (a shorter chain; f + k ln2_hi rounds once more, < 1 ulp).
  const float lo = k * -2.12194440e-4f - 0.5f * z;
  const float hi = f + k * 0.693359375f;
  return (p * (f * z) + lo) + hi;
}

}  // namespace detail

template <>
inline float log1p_unit<float>(float e) {
  const float e2 = e * e, e4 = e2 * e2;
  const float q01 = -4.9999931455e-01f + 3.3330464363e-01f * e;
  const float q23 = -2.4958018959e-01f + 1.9692102075e-01f * e;
  const float q45 = -1.5344880521e-01f + 1.0661128163e-01f * e;
  const float q67 = -5.7457230985e-02f + 2.0086241886e-02f * e;
  const float q = (q01 + q23 * e2) + (q45 + q67 * e2) * e4 + -3.2904685941e-03f * (e4 * e4);
  return e * (e * q) + e;  // one fused multiply-add where the ISA has it
}
#endif

// e = exp(-|x|): the one transcendental of the softplus terms and of BCE with logits, which their
// `_given_exp` forms take ready-made. A CPU loop computes it for a block of elements first: one
// iteration of the whole term is a dependency chain (exp, a division, log) too long for the core
// to overlap two of, two shorter loops overlap (4096 logits, Zen 1: 18.9 -> 14.5 us).
template <typename T>
GK_HOST_DEVICE T exp_neg_abs(T x) {
  return exp_neg(fabs(x));
}

// softplus(s * x) and its derivative sigmoid(s * x) (s = +1 or -1), given e = exp_neg_abs(x).
template <typename T>
GK_HOST_DEVICE T softplus_sigmoid(T x, T s, T e, T* d) {
  const T y = s * x;
  const T u = T(1) + e;
  const T inv = T(1) / u;
  *d = y >= T(0) ? inv : e * inv;  // NaN -> NaN (e is NaN)
  const T m = y > T(0) ? y : T(0);
  return m + log1p_unit(e);
}

// Does term K read e = exp_neg_abs(x)?
template <LossTerm K>
constexpr bool kTermUsesExp = K == LossTerm::kSoftplusNeg || K == LossTerm::kSoftplusPos;

// Value of the term at x; *d receives its derivative. e: exp_neg_abs(x) where kTermUsesExp<K>,
// else unread.
template <LossTerm K, typename T>
GK_HOST_DEVICE T loss_term_given_exp(T x, T e, T* d) {
  if constexpr (K == LossTerm::kSoftplusNeg) {
    T sg;
    const T v = softplus_sigmoid(x, T(-1), e, &sg);
    *d = -sg;
    return v;
  } else if constexpr (K == LossTerm::kSoftplusPos) {
    return softplus_sigmoid(x, T(1), e, d);
  } else if constexpr (K == LossTerm::kHingeReal) {
    const T t = T(1) - x;
    *d = t <= T(0) ? T(0) : T(-1);  // as torch's relu backward: NaN passes the gradient
    return t < T(0) ? T(0) : t;
  } else if constexpr (K == LossTerm::kHingeFake) {
    const T t = T(1) + x;
    *d = t <= T(0) ? T(0) : T(1);
    return t < T(0) ? T(0) : t;
  } else if constexpr (K == LossTerm::kNeg) {
    *d = T(-1);
    return -x;
  } else if constexpr (K == LossTerm::kPos) {
    *d = T(1);
    return x;
  } else if constexpr (K == LossTerm::kSqOne) {
    *d = x - T(1);
    return T(0.5) * (x - T(1)) * (x - T(1));
  } else {
    *d = x;
    return T(0.5) * x * x;
  }
}

template <LossTerm K, typename T>
GK_HOST_DEVICE T loss_term(T x, T* d) {
  return loss_term_given_exp<K>(x, kTermUsesExp<K> ? exp_neg_abs(x) : T(0), d);
}

template <LossTerm K>
struct LossTermTag {
  static constexpr LossTerm value = K;
};

// Calls f(LossTermTag<K>{}) for the runtime id: one specialization per term (host code: it
// picks the kernel to launch).
template <typename F>
inline void dispatch_loss_term(LossTerm k, F&& f) {
  switch (k) {
    case LossTerm::kSoftplusNeg:
      return f(LossTermTag<LossTerm::kSoftplusNeg>{});
    case LossTerm::kSoftplusPos:
      return f(LossTermTag<LossTerm::kSoftplusPos>{});
    case LossTerm::kHingeReal:
      return f(LossTermTag<LossTerm::kHingeReal>{});
    case LossTerm::kHingeFake:
      return f(LossTermTag<LossTerm::kHingeFake>{});
    case LossTerm::kNeg:
      return f(LossTermTag<LossTerm::kNeg>{});
    case LossTerm::kPos:
      return f(LossTermTag<LossTerm::kPos>{});
    case LossTerm::kSqOne:
      return f(LossTermTag<LossTerm::kSqOne>{});
    default:
      return f(LossTermTag<LossTerm::kSqZero>{});
  }
}

// Per-element reconstruction loss l(x, t) with dl/dx in *dx and dl/dt in *dt.
//   kBceLogits: softplus(x) - t * x             (x a logit)
//   kBce:       -(t * log(x) + (1 - t) * log(1 - x)), each log clamped at -100 (as torch)
//   kMse:       (x - t)^2
// e: exp_neg_abs(x) where kReconUsesExp<R>, else unread.
template <ReconLoss R, typename T>
GK_HOST_DEVICE T recon_term_given_exp(T x, T t, T e, T* dx, T* dt) {
  if constexpr (R == ReconLoss::kBceLogits) {
    // softplus(x) - t * x, written as l + (1 - t) * x for x > 0 and l - t * x otherwise, with
    // l = log1p(exp(-|x|)): no cancellation, and a zero weight times an infinite logit counts 0,
    // so +-inf logits give the limit (0 at a matching 0/1 target, inf otherwise), not inf - inf.
    const T u = T(1) + e;
    const T inv = T(1) / u;
    const T l = log1p_unit(e);
    *dx = (x >= T(0) ? inv : e * inv) - t;
    *dt = -x;
    const T a = T(1) - t;
    const T pos = l + (a == T(0) ? T(0) : a * x);
    const T neg = l - (t == T(0) ? T(0) : t * x);
    return x > T(0) ? pos : neg;
  } else if constexpr (R == ReconLoss::kBce) {
    T lx = log(x), l1x = log(T(1) - x);
    lx = lx < T(-100) ? T(-100) : lx;
    l1x = l1x < T(-100) ? T(-100) : l1x;
    // torch's backward: (x - t) / max((1 - x) * x, 1e-12)
    T den = (T(1) - x) * x;
    den = den < T(1e-12) ? T(1e-12) : den;
    *dx = (x - t) / den;
    *dt = l1x - lx;
    return -(t * lx + (T(1) - t) * l1x);
  } else {
    const T r = x - t;
    *dx = T(2) * r;
    *dt = T(-2) * r;
    return r * r;
  }
}

template <ReconLoss R>
constexpr bool kReconUsesExp = R == ReconLoss::kBceLogits;

template <ReconLoss R, typename T>
GK_HOST_DEVICE T recon_term(T x, T t, T* dx, T* dt) {
  return recon_term_given_exp<R>(x, t, kReconUsesExp<R> ? exp_neg_abs(x) : T(0), dx, dt);
}

template <ReconLoss R>
struct ReconLossTag {
  static constexpr ReconLoss value = R;
};

template <typename F>
inline void dispatch_recon_loss(ReconLoss r, F&& f) {
  switch (r) {
    case ReconLoss::kBceLogits:
      return f(ReconLossTag<ReconLoss::kBceLogits>{});
    case ReconLoss::kBce:
      return f(ReconLossTag<ReconLoss::kBce>{});
    default:
      return f(ReconLossTag<ReconLoss::kMse>{});
  }
}

// KL term of one latent element: -0.5 * (1 + lv - mu^2 - exp(lv)), with d/dmu = mu and
// d/dlv = 0.5 * (exp(lv) - 1).
template <typename T>
GK_HOST_DEVICE T kl_term(T mu, T lv, T* dmu, T* dlv) {
  const T e = exp_full(lv);
  *dmu = mu;
  *dlv = T(0.5) * (e - T(1));
  return T(-0.5) * (T(1) + lv - mu * mu - e);
}

}  // namespace genkern
