#include "batch_norm_act.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/where.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "batch_norm_act_slab_list.h"
#include "dispatch_bool.h"
#include "epilogue.h"
#include "layout_copy.h"
#include "genkern/activation.h"

// The slab kernels (batch_norm_act_slabs.h), as baseline code and as AVX2 code chosen at run time:
// each instantiated in a translation unit of its own (batch_norm_act_slabs_{base,avx2}.cpp).
#define GK_SLABS_NS slabs_base
#include "batch_norm_act_slabs.h"
GK_SLAB_INSTANCES(extern)
#undef GK_SLABS_NS
#if GK_SLABS_AVX2
#pragma GCC push_options
#pragma GCC target("avx2")
#define GK_SLABS_NS slabs_avx2
#include "batch_norm_act_slabs.h"
GK_SLAB_INSTANCES(extern)
#undef GK_SLABS_NS
#pragma GCC pop_options
#else
namespace genkern::cpu {
namespace slabs_avx2 = slabs_base;
}
#endif

namespace genkern::cpu {
namespace {

// x seen as [outer, channels, inner]: NCHW planes (inner = H*W), or rows of C (inner == 1) for
// channels_last, whose rows are the N*H*W pixels.
struct View {
  int64_t outer, channels, inner;
};

bool is_rows(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() &&
         t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

View view_of(const at::Tensor& t) {
  const int64_t c = t.size(1);
  if (is_rows(t)) return {t.numel() / std::max<int64_t>(c, 1), c, 1};
  TORCH_INTERNAL_ASSERT(t.is_contiguous(), "genkern: batch_norm expects a dense tensor");
  const int64_t n = t.size(0);
  return {n, c, t.numel() / std::max<int64_t>(n * c, 1)};
}

at::MemoryFormat format_of(const at::Tensor& t) {
  return is_rows(t) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

constexpr int64_t kChunk = 16384;  // elements per task; fixed so results do not depend on threads

#if GK_SLABS_AVX2
bool use_avx2() {  // GENKERN_CPU_NO_AVX2=1 forces the baseline code (tests of it on AVX2 machines)
  static const bool yes = [] {
    const char* off = std::getenv("GENKERN_CPU_NO_AVX2");
    if (off && *off && std::strcmp(off, "0") != 0) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return yes;
}
#else
bool use_avx2() { return false; }
#endif
#define GK_SLABS(...) (use_avx2() ? slabs_avx2::__VA_ARGS__ : slabs_base::__VA_ARGS__)

// NCHW with planes of at most kSlabPlane elements goes slab by slab (n by n) rather than channel
// by channel over rows of L elements: tasks of kSlabTask elements (whole slabs), fixed so that the
// results do not depend on the number of threads, whose per-channel partial sums are added in
// task order.
constexpr int64_t kSlabPlane = 4096;
constexpr int64_t kSlabTask = 131072;

bool use_slabs(const View& v) { return v.inner > 1 && v.inner <= kSlabPlane; }

int64_t slab_block(const View& v) {
  return std::max<int64_t>(1, kSlabTask / std::max<int64_t>(1, v.channels * v.inner));
}

// Runs fn(n0, n1, acc1, acc2) for each task, acc1/acc2 = kLanes zeroed lanes per channel, and
// returns (sum1, sum2) per channel: each task's lanes summed pairwise, the tasks in order.
template <typename opmath_t, typename F>
std::pair<std::vector<double>, std::vector<double>> slab_sums(const View& v, const F& fn) {
  const int64_t C = v.channels, nb = slab_block(v), tasks = (v.outer + nb - 1) / nb;
  std::vector<double> part(2 * tasks * C);
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<opmath_t> acc(2 * C * kLanes);
    opmath_t* a1 = acc.data();
    opmath_t* a2 = a1 + C * kLanes;
    for (int64_t t = t0; t < t1; ++t) {
      std::fill(acc.begin(), acc.end(), opmath_t(0));
      fn(t * nb, std::min(v.outer, (t + 1) * nb), a1, a2);
      double* p = part.data() + 2 * t * C;
      for (int64_t c = 0; c < C; ++c)
        for (int k = 0; k < 2; ++k) {
          const opmath_t* q = (k ? a2 : a1) + c * kLanes;
          double l[kLanes];
          for (int j = 0; j < kLanes; ++j) l[j] = double(q[j]);
          for (int h = kLanes / 2; h > 0; h /= 2)
            for (int j = 0; j < h; ++j) l[j] += l[j + h];
          p[k * C + c] = l[0];
        }
    }
  });
  std::vector<double> s1(C, 0.0), s2(C, 0.0);
  for (int64_t t = 0; t < tasks; ++t)
    for (int64_t c = 0; c < C; ++c) {
      s1[c] += part[2 * t * C + c];
      s2[c] += part[(2 * t + 1) * C + c];
    }
  return {std::move(s1), std::move(s2)};
}

struct Moments {
  double n = 0, mean = 0, m2 = 0;
  void merge(double nb, double mb, double m2b) {  // Chan et al.
    if (nb == 0) return;
    const double tot = n + nb, delta = mb - mean;
    mean += delta * (nb / tot);
    m2 += m2b + delta * delta * (n * nb / tot);
    n = tot;
  }
};

// (mean, M2) of `segs` segments of `len` elements at stride `stride` from p (segs * len <=
// kChunk: cache-resident), in two passes with opmath lanes.
template <typename scalar_t, typename opmath_t>
inline void chunk_moments(const scalar_t* p, int64_t segs, int64_t len, int64_t stride,
                          double& mean, double& m2) {
  opmath_t acc[kLanes] = {};
  opmath_t s = 0;
  for (int64_t k = 0; k < segs; ++k) {
    const scalar_t* q = p + k * stride;
    int64_t i = 0;
    for (; i + kLanes <= len; i += kLanes)
      for (int j = 0; j < kLanes; ++j) acc[j] += opmath_t(q[i + j]);
    for (; i < len; ++i) s += opmath_t(q[i]);
  }
  for (int j = 0; j < kLanes; ++j) s += acc[j];
  const opmath_t m = s / opmath_t(segs * len);
  // second pass around m, with the corrected two-pass formulas: mean = m + sum(d) / n and
  // M2 = sum(d^2) - sum(d)^2 / n, so m's rounding (ulp(|mean|)) does not reach the results
  opmath_t acc1[kLanes] = {}, acc2[kLanes] = {};
  opmath_t s1 = 0, s2 = 0;
  for (int64_t k = 0; k < segs; ++k) {
    const scalar_t* q = p + k * stride;
    int64_t i = 0;
    for (; i + kLanes <= len; i += kLanes)
      for (int j = 0; j < kLanes; ++j) {
        const opmath_t d = opmath_t(q[i + j]) - m;
        acc1[j] += d;
        acc2[j] += d * d;
      }
    for (; i < len; ++i) {
      const opmath_t d = opmath_t(q[i]) - m;
      s1 += d;
      s2 += d * d;
    }
  }
  for (int j = 0; j < kLanes; ++j) {
    s1 += acc1[j];
    s2 += acc2[j];
  }
  const double n = double(segs * len);
  mean = double(m) + double(s1) / n;
  m2 = std::max(0.0, double(s2) - double(s1) * double(s1) / n);
}

// Per-channel batch mean and biased variance (as double) of x.
template <typename scalar_t>
void batch_moments(const scalar_t* xp, const View& v, std::vector<double>& mean,
                   std::vector<double>& var) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t C = v.channels;
  mean.assign(C, 0.0);
  var.assign(C, 0.0);
  if (v.inner == 1) {  // rows of C
    const int64_t rows = std::max<int64_t>(1, kChunk / std::max<int64_t>(C, 1));
    const int64_t tasks = (v.outer + rows - 1) / rows;
    std::vector<double> pm(tasks * C), pm2(tasks * C);
    at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
      std::vector<opmath_t> s(C), s1(C), s2(C);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t r0 = t * rows, r1 = std::min(v.outer, r0 + rows);
        std::fill(s.begin(), s.end(), opmath_t(0));
        std::fill(s1.begin(), s1.end(), opmath_t(0));
        std::fill(s2.begin(), s2.end(), opmath_t(0));
        opmath_t* sp = s.data();
        opmath_t* s1p = s1.data();
        opmath_t* s2p = s2.data();
        for (int64_t r = r0; r < r1; ++r) {
          const scalar_t* row = xp + r * C;
          for (int64_t c = 0; c < C; ++c) sp[c] += opmath_t(row[c]);
        }
        const opmath_t inv = opmath_t(1) / opmath_t(r1 - r0);
        for (int64_t c = 0; c < C; ++c) sp[c] *= inv;
        for (int64_t r = r0; r < r1; ++r) {
          const scalar_t* row = xp + r * C;
          for (int64_t c = 0; c < C; ++c) {
            const opmath_t d = opmath_t(row[c]) - sp[c];
            s1p[c] += d;
            s2p[c] += d * d;
          }
        }
        const double n = double(r1 - r0);
        for (int64_t c = 0; c < C; ++c) {  // corrected two-pass, as chunk_moments
          pm[t * C + c] = double(sp[c]) + double(s1p[c]) / n;
          pm2[t * C + c] =
              std::max(0.0, double(s2p[c]) - double(s1p[c]) * double(s1p[c]) / n);
        }
      }
    });
    at::parallel_for(0, C, 64, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        Moments m;
        for (int64_t t = 0; t < tasks; ++t) {
          const int64_t cnt = std::min(v.outer, (t + 1) * rows) - t * rows;
          m.merge(double(cnt), pm[t * C + c], pm2[t * C + c]);
        }
        mean[c] = m.mean;
        var[c] = m.n > 0 ? m.m2 / m.n : 0.0;
      }
    });
  } else {  // planes
    // the exact per-channel moments: the planes of channel c, chunks merged in order
    auto channel = [&](int64_t c) {
      Moments m;
      double cm, cm2;
      if (v.inner <= kChunk) {  // groups of whole planes of this channel
        const int64_t group = std::max<int64_t>(1, kChunk / v.inner);
        for (int64_t o0 = 0; o0 < v.outer; o0 += group) {
          const int64_t segs = std::min(group, v.outer - o0);
          chunk_moments<scalar_t, opmath_t>(xp + (o0 * C + c) * v.inner, segs, v.inner,
                                            C * v.inner, cm, cm2);
          m.merge(double(segs * v.inner), cm, cm2);
        }
      } else {  // large planes: fixed chunks of each
        for (int64_t o = 0; o < v.outer; ++o) {
          const scalar_t* plane = xp + (o * C + c) * v.inner;
          for (int64_t i0 = 0; i0 < v.inner; i0 += kChunk) {
            const int64_t n = std::min(kChunk, v.inner - i0);
            chunk_moments<scalar_t, opmath_t>(plane + i0, 1, n, 0, cm, cm2);
            m.merge(double(n), cm, cm2);
          }
        }
      }
      mean[c] = m.mean;
      var[c] = m.n > 0 ? m.m2 / m.n : 0.0;
    };
    if (!use_slabs(v)) {  // one task per channel
      at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) channel(c);
      });
      return;
    }
    // Slabs: one pass of shifted sums around k = x[0, c, 0], with the corrected formulas (mean =
    // k + S1 / n, M2 = S2 - S1^2 / n), whose relative error grows as 1 + (mean - k)^2 / var;
    // a channel where (mean - k)^2 > 16 var (or not finite) is redone exactly by `channel`.
    std::vector<opmath_t> shift(C);
    for (int64_t c = 0; c < C; ++c) shift[c] = opmath_t(xp[c * v.inner]);
    auto [s1, s2] = slab_sums<opmath_t>(v, [&](int64_t n0, int64_t n1, opmath_t* a1, opmath_t* a2) {
      GK_SLABS(stats<scalar_t, opmath_t>)(xp, C, v.inner, n0, n1, shift.data(), a1, a2);
    });
    const double n = double(v.outer) * double(v.inner);
    for (int64_t c = 0; c < C; ++c) {
      const double dm = s1[c] / n, m2 = s2[c] - s1[c] * dm;
      if (dm * dm * n <= 16.0 * m2) {
        mean[c] = double(shift[c]) + dm;
        var[c] = std::max(0.0, m2) / n;
      } else {
        channel(c);
      }
    }
  }
}

// dst = act((x - center[c]) * scale[c] + shift[c]) (A fixed at compile time); pre gets the
// pre-activation. Centering first keeps a channel whose mean is large against its spread exact
// (x * scale + (shift - center * scale) would round at |center| * scale).
template <Activation A, typename scalar_t, typename opmath_t>
void affine_act(const scalar_t* xp, scalar_t* yp, scalar_t* pre, const View& v,
                const opmath_t* center, const opmath_t* scale, const opmath_t* shift,
                opmath_t slope) {
  const int64_t C = v.channels;
  if (v.inner == 1) {
    const int64_t rows = std::max<int64_t>(1, kChunk / std::max<int64_t>(C, 1));
    at::parallel_for(0, v.outer, rows, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* xr = xp + r * C;
        scalar_t* yr = yp + r * C;
        if (pre) {
          scalar_t* pr = pre + r * C;
          for (int64_t c = 0; c < C; ++c) {
            const opmath_t z = (opmath_t(xr[c]) - center[c]) * scale[c] + shift[c];
            pr[c] = scalar_t(z);
            yr[c] = scalar_t(act_forward<A, opmath_t>(z, slope));
          }
        } else {
          for (int64_t c = 0; c < C; ++c)
            yr[c] = scalar_t(act_forward<A, opmath_t>(
                (opmath_t(xr[c]) - center[c]) * scale[c] + shift[c], slope));
        }
      }
    });
  } else if (use_slabs(v)) {
    at::parallel_for(0, v.outer, slab_block(v), [&](int64_t n0, int64_t n1) {
      GK_SLABS(affine<A, scalar_t, opmath_t>)(xp, yp, pre, C, v.inner, n0, n1, center, scale, shift,
                                              slope);
    });
  } else {
    const int64_t planes = v.outer * C;
    const int64_t grain = std::max<int64_t>(1, kChunk / v.inner);
    at::parallel_for(0, planes, grain, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t c = p % C;
        const opmath_t m = center[c], a = scale[c], b = shift[c];
        const scalar_t* xr = xp + p * v.inner;
        scalar_t* yr = yp + p * v.inner;
        if (pre) {
          scalar_t* pr = pre + p * v.inner;
          for (int64_t i = 0; i < v.inner; ++i) {
            const opmath_t z = (opmath_t(xr[i]) - m) * a + b;
            pr[i] = scalar_t(z);
            yr[i] = scalar_t(act_forward<A, opmath_t>(z, slope));
          }
        } else {
          for (int64_t i = 0; i < v.inner; ++i)
            yr[i] = scalar_t(act_forward<A, opmath_t>((opmath_t(xr[i]) - m) * a + b, slope));
        }
      }
    });
  }
}

bool exp_activation(Activation a) {
  return a == Activation::kTanh || a == Activation::kSigmoid || a == Activation::kSilu;
}

// y = act((x - center[c]) * scale[c] + shift[c]) (pre: the pre-activation when defined), in
// x's layout; the one place the forward's normalization runs, so a recomputation of y matches
// the forward's bits.
template <typename scalar_t, typename opmath_t>
void normalize_act(const at::Tensor& x, at::Tensor& y, at::Tensor& preact, const opmath_t* center,
                   const opmath_t* scale, const opmath_t* shift, Activation act,
                   double negative_slope) {
  if (x.numel() == 0) return;
  const View v = view_of(x);
  const scalar_t* xp = x.data_ptr<scalar_t>();
  const opmath_t slope = opmath_t(negative_slope);
  const bool save_preact = preact.defined() && preact.numel() > 0;
  if (exp_activation(act)) {  // affine pass, then ATen's vectorized exp-based activation
    at::Tensor z = save_preact ? preact : y;
    affine_act<Activation::kIdentity, scalar_t, opmath_t>(xp, z.data_ptr<scalar_t>(), nullptr, v,
                                                          center, scale, shift, slope);
    activation_(z, static_cast<int64_t>(act), negative_slope, save_preact ? &y : nullptr);
    return;
  }
  scalar_t* yp = y.data_ptr<scalar_t>();
  scalar_t* pp = save_preact ? preact.data_ptr<scalar_t>() : nullptr;
  dispatch_activation(act, [&](auto tag) {
    constexpr Activation A = decltype(tag)::value;
    if constexpr (A == Activation::kRelu || A == Activation::kLeakyRelu ||
                  A == Activation::kIdentity) {
      affine_act<A, scalar_t, opmath_t>(xp, yp, pp, v, center, scale, shift, slope);
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_act_forward_cpu(
    const at::Tensor& x, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, bool training, double momentum, double eps,
    int64_t activation, double negative_slope, bool save_preact) {
  return batch_norm_act_forward_affine_cpu(x, weight, bias, running_mean, running_var, training,
                                           momentum, eps, activation, negative_slope,
                                           save_preact, nullptr);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
batch_norm_act_forward_affine_cpu(
    const at::Tensor& x, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, bool training, double /*momentum*/, double eps,
    int64_t activation, double negative_slope, bool save_preact, BatchNormAffine* affine) {
  const auto act = static_cast<Activation>(activation);
  const View v = view_of(x);
  const int64_t C = v.channels;
  const auto fmt = format_of(x);
  const auto stat_type = at::toOpMathType(x.scalar_type());
  at::Tensor y = at::empty_like(x, fmt);
  at::Tensor preact = save_preact ? at::empty_like(x, fmt) : at::empty({0}, x.options());
  at::Tensor mean_t = at::empty({C}, x.options().dtype(stat_type));
  at::Tensor invstd_t = at::empty({C}, x.options().dtype(stat_type));
  at::Tensor var_t = at::empty({C}, x.options().dtype(stat_type));
  at::Tensor scale_t = at::empty({C}, x.options().dtype(stat_type));
  at::Tensor shift_t = at::empty({C}, x.options().dtype(stat_type));
  const bool has_w = weight.has_value() && weight->defined();
  const bool has_b = bias.has_value() && bias->defined();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "batch_norm_act", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    std::vector<double> mean(C), var(C);
    if (training) {
      batch_moments<scalar_t>(x.data_ptr<scalar_t>(), v, mean, var);
    } else {
      at::Tensor rm = running_mean->to(at::kDouble).contiguous();
      at::Tensor rv = running_var->to(at::kDouble).contiguous();
      for (int64_t c = 0; c < C; ++c) {
        mean[c] = rm.data_ptr<double>()[c];
        var[c] = rv.data_ptr<double>()[c];
      }
    }
    at::Tensor wd = has_w ? weight->to(at::kDouble).contiguous() : at::Tensor();
    at::Tensor bd = has_b ? bias->to(at::kDouble).contiguous() : at::Tensor();
    opmath_t* mp = mean_t.data_ptr<opmath_t>();  // the center
    opmath_t* ip = invstd_t.data_ptr<opmath_t>();
    opmath_t* vp = var_t.data_ptr<opmath_t>();
    opmath_t* sp = scale_t.data_ptr<opmath_t>();
    opmath_t* hp = shift_t.data_ptr<opmath_t>();
    for (int64_t c = 0; c < C; ++c) {
      const double invstd = 1.0 / std::sqrt(var[c] + eps);
      const double w = has_w ? wd.data_ptr<double>()[c] : 1.0;
      const double b = has_b ? bd.data_ptr<double>()[c] : 0.0;
      mp[c] = opmath_t(mean[c]);
      vp[c] = opmath_t(var[c]);
      ip[c] = opmath_t(invstd);
      sp[c] = opmath_t(w * invstd);
      hp[c] = opmath_t(b);
    }
    normalize_act<scalar_t, opmath_t>(x, y, preact, mp, sp, hp, act, negative_slope);
  });
  if (affine) *affine = {mean_t, scale_t, shift_t};
  return {y, mean_t, invstd_t, var_t, preact};
}

at::Tensor batch_norm_act_apply_cpu(const at::Tensor& x, const BatchNormAffine& affine,
                                    int64_t activation, double negative_slope) {
  const auto stat_type = at::toOpMathType(x.scalar_type());
  for (const at::Tensor* t : {&affine.center, &affine.scale, &affine.shift}) {
    TORCH_CHECK(t->dim() == 1 && t->size(0) == x.size(1) && t->scalar_type() == stat_type &&
                    t->is_contiguous() && t->device() == x.device(),
                "genkern: batch_norm_act_apply_cpu expects per-channel ", stat_type,
                " coefficients of x's ", x.size(1), " channels");
  }
  at::Tensor y = at::empty_like(x, format_of(x));
  at::Tensor no_preact;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "bn_act_apply", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    normalize_act<scalar_t, opmath_t>(x, y, no_preact, affine.center.data_ptr<opmath_t>(),
                                      affine.scale.data_ptr<opmath_t>(),
                                      affine.shift.data_ptr<opmath_t>(),
                                      static_cast<Activation>(activation), negative_slope);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_act_backward_cpu(
    const at::Tensor& grad_y, const std::optional<at::Tensor>& saved, const at::Tensor& x,
    const std::optional<at::Tensor>& weight, const at::Tensor& mean, const at::Tensor& invstd,
    bool training, int64_t activation, double negative_slope, std::array<bool, 3> output_mask,
    const std::optional<at::Tensor>& bias, bool x_is_output) {
  const auto act = static_cast<Activation>(activation);
  TORCH_CHECK(!x_is_output || batch_norm_output_invertible(x, weight, bias, training,
                                                           activation, negative_slope),
              "genkern: batch_norm backward from the output needs what batch_norm_keeps_output "
              "checks");
  const bool has_saved =
      !x_is_output && saved.has_value() && saved->defined() && saved->numel() > 0;
  // Without the saved tensor, a relu / leaky_relu (slope >= 0) backward needs only the sign of
  // its input z = (x - mean) * scale + bias, recomputed from x: two passes fewer over memory.
  const bool recompute =
      !x_is_output && !has_saved &&
      (act == Activation::kRelu ||
       (act == Activation::kLeakyRelu && saves_output(act, negative_slope)));
  TORCH_CHECK(has_saved || recompute || x_is_output || act == Activation::kIdentity,
              "genkern: batch_norm backward needs the saved tensor");
  const auto fmt = format_of(x);
  const at::Tensor gy = contiguous_as(grad_y, fmt);
  const at::Tensor s = has_saved ? contiguous_as(*saved, fmt) : at::Tensor();
  const View v = view_of(x);
  const int64_t C = v.channels;
  const bool has_w = weight.has_value() && weight->defined();
  // the reduction is needed for dweight, dbias, and dx in training
  const bool need_reduce = output_mask[1] || output_mask[2] || (training && output_mask[0]);
  at::Tensor gx = output_mask[0] ? at::empty_like(x, fmt) : at::empty({0}, x.options());
  // dweight and dbias in the parameters' dtype (float32 beside a 16-bit input), from float64 sums
  const auto param_dtype = has_w ? weight->scalar_type() : x.scalar_type();
  const auto sums = x.options().dtype(at::kDouble);
  at::Tensor gw = output_mask[1] ? at::empty({C}, sums) : at::empty({0}, x.options());
  at::Tensor gb = output_mask[2] ? at::empty({C}, sums) : at::empty({0}, x.options());
  const double count = double(v.outer) * double(v.inner);

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, x.scalar_type(), "batch_norm_act_bwd", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gyp = gy.data_ptr<scalar_t>();
    const scalar_t* sp = has_saved ? s.data_ptr<scalar_t>() : nullptr;
    const opmath_t slope = opmath_t(negative_slope);
    at::Tensor md = mean.to(at::kDouble).contiguous(), id = invstd.to(at::kDouble).contiguous();
    at::Tensor wd = has_w ? weight->to(at::kDouble).contiguous() : at::Tensor();
    const double* mdp = md.data_ptr<double>();
    const double* idp = id.data_ptr<double>();
    std::vector<opmath_t> meanv(C), zscale(C), zshift(C);
    at::Tensor bd = (recompute || x_is_output) && bias.has_value() && bias->defined()
                        ? bias->to(at::kDouble).contiguous()
                        : at::Tensor();
    for (int64_t c = 0; c < C; ++c) {
      const double a = (has_w ? wd.data_ptr<double>()[c] : 1.0) * idp[c];
      const double b = bd.defined() ? bd.data_ptr<double>()[c] : 0.0;
      // kOutput: x - mean = (z - b) * (1 / a), z from y (see centered in the slabs header)
      meanv[c] = opmath_t(x_is_output ? b : mdp[c]);
      zscale[c] = opmath_t(x_is_output ? 1.0 / a : a);
      zshift[c] = opmath_t(b);
    }
    std::vector<double> sum_g(C, 0.0), sum_gx(C, 0.0);  // sum g, sum g * (x - mean)
    dispatch_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      auto body = [&](auto mode_tag) {
      constexpr int R = decltype(mode_tag)::value;  // compile time: the loops vectorize
      if constexpr (!backward_mode_exists<A, R>()) {
        return;  // unreachable (`recompute` and the check above): no code for it
      } else {
      // g at element i of channel c: act's backward from the saved tensor, the recomputed z or y
      auto gfun = [&](int64_t i, int64_t c) -> opmath_t {
        if constexpr (A == Activation::kIdentity) {
          return opmath_t(gyp[i]);
        } else {
          opmath_t s;
          if constexpr (R == kRecompute) {
            s = (opmath_t(xp[i]) - meanv[c]) * zscale[c] + zshift[c];
          } else if constexpr (R == kOutput) {
            s = opmath_t(xp[i]);
          } else {
            s = opmath_t(sp[i]);
          }
          return act_backward<A, opmath_t>(opmath_t(gyp[i]), s, slope);
        }
      };
      // x - mean at element i of channel c
      const opmath_t inv_slope = opmath_t(1) / slope;
      auto xc = [&](int64_t i, int64_t c) -> opmath_t {
        return slabs_base::centered<R>(opmath_t(xp[i]), meanv[c], zscale[c], inv_slope);
      };
      if (need_reduce && x.numel() > 0) {
        if (v.inner == 1) {
          const int64_t rows = std::max<int64_t>(1, kChunk / std::max<int64_t>(C, 1));
          const int64_t tasks = (v.outer + rows - 1) / rows;
          std::vector<opmath_t> pg(tasks * C, 0), pgx(tasks * C, 0);
          at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
            for (int64_t t = t0; t < t1; ++t) {
              GK_SLABS(row_grad_sums<A, R, scalar_t, opmath_t>)(
                  gyp, sp, xp, C, t * rows, std::min(v.outer, (t + 1) * rows), meanv.data(),
                  zscale.data(), zshift.data(), slope, pg.data() + t * C, pgx.data() + t * C);
            }
          });
          for (int64_t t = 0; t < tasks; ++t)
            for (int64_t c = 0; c < C; ++c) {
              sum_g[c] += double(pg[t * C + c]);
              sum_gx[c] += double(pgx[t * C + c]);
            }
        } else if (use_slabs(v)) {
          std::tie(sum_g, sum_gx) = slab_sums<opmath_t>(
              v, [&](int64_t n0, int64_t n1, opmath_t* a1, opmath_t* a2) {
                GK_SLABS(grad_sums<A, R, scalar_t, opmath_t>)(
                    gyp, sp, xp, C, v.inner, n0, n1, meanv.data(), zscale.data(), zshift.data(),
                    slope, a1, a2);
              });
        } else {
          at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
            for (int64_t c = c0; c < c1; ++c) {
              double tg = 0, tgx = 0;
              opmath_t a[kLanes] = {}, b[kLanes] = {};
              int64_t pending = 0;  // elements in the lanes; flushed to double every kChunk
              for (int64_t o = 0; o < v.outer; ++o) {
                const int64_t base = (o * C + c) * v.inner;
                for (int64_t i0 = 0; i0 < v.inner; i0 += kChunk) {
                  const int64_t n = std::min(kChunk, v.inner - i0);
                  int64_t i = 0;
                  const int64_t off = base + i0;
                  for (; i + kLanes <= n; i += kLanes)
                    for (int j = 0; j < kLanes; ++j) {
                      const opmath_t g = gfun(off + i + j, c);
                      a[j] += g;
                      b[j] += g * xc(off + i + j, c);
                    }
                  opmath_t ra = 0, rb = 0;
                  for (; i < n; ++i) {
                    const opmath_t g = gfun(off + i, c);
                    ra += g;
                    rb += g * xc(off + i, c);
                  }
                  tg += double(ra);
                  tgx += double(rb);
                  pending += n;
                  if (pending >= kChunk) {
                    for (int j = 0; j < kLanes; ++j) {
                      tg += double(a[j]);
                      tgx += double(b[j]);
                      a[j] = b[j] = 0;
                    }
                    pending = 0;
                  }
                }
              }
              for (int j = 0; j < kLanes; ++j) {
                tg += double(a[j]);
                tgx += double(b[j]);
              }
              sum_g[c] = tg;
              sum_gx[c] = tgx;
            }
          });
        }
      }
      if (output_mask[1]) {
        double* p = gw.data_ptr<double>();
        for (int64_t c = 0; c < C; ++c) p[c] = sum_gx[c] * idp[c];
      }
      if (output_mask[2]) {
        double* p = gb.data_ptr<double>();
        for (int64_t c = 0; c < C; ++c) p[c] = sum_g[c];
      }
      if (!output_mask[0] || x.numel() == 0) return;
      // gx = ka * g + kb * x + kc per channel
      std::vector<opmath_t> ka(C), kb(C), kc(C);
      for (int64_t c = 0; c < C; ++c) {
        const double w = has_w ? wd.data_ptr<double>()[c] : 1.0;
        const double a = w * idp[c];
        if (training) {
          const double mean_g = sum_g[c] / count;
          const double mean_gxhat = sum_gx[c] * idp[c] / count;
          // gx = a * (g + kb * (x - mean) + kc): the cancellation happens at the scale of g,
          // before the multiplication by w * invstd (as torch's), not after it
          ka[c] = opmath_t(a);
          kb[c] = opmath_t(-idp[c] * mean_gxhat);
          kc[c] = opmath_t(-mean_g);
        } else {
          ka[c] = opmath_t(a);
          kb[c] = 0;
          kc[c] = 0;
        }
      }
      scalar_t* gxp = gx.data_ptr<scalar_t>();
      // In evaluation gx = ka * g alone: no "+ 0 * x" term, which would turn an inf or NaN in x
      // into a NaN gradient (the composite's is finite there).
      auto apply = [&](auto train_tag) {
      constexpr bool kTrain = decltype(train_tag)::value;
      if (v.inner == 1) {
        const int64_t rows = std::max<int64_t>(1, kChunk / std::max<int64_t>(C, 1));
        at::parallel_for(0, v.outer, rows, [&](int64_t r0, int64_t r1) {
          GK_SLABS(row_grad_apply<A, R, kTrain, scalar_t, opmath_t>)(
              gyp, sp, xp, gxp, C, r0, r1, meanv.data(), zscale.data(), zshift.data(), ka.data(),
              kb.data(), kc.data(), slope);
        });
      } else if (use_slabs(v)) {
        at::parallel_for(0, v.outer, slab_block(v), [&](int64_t n0, int64_t n1) {
          GK_SLABS(grad_apply<A, R, kTrain, scalar_t, opmath_t>)(
              gyp, sp, xp, gxp, C, v.inner, n0, n1, meanv.data(), zscale.data(), zshift.data(),
              ka.data(), kb.data(), kc.data(), slope);
        });
      } else {
        const int64_t planes = v.outer * C;
        const int64_t grain = std::max<int64_t>(1, kChunk / v.inner);
        at::parallel_for(0, planes, grain, [&](int64_t p0, int64_t p1) {
          for (int64_t p = p0; p < p1; ++p) {
            const int64_t c = p % C;
            const opmath_t a = ka[c], b = kb[c], d = kc[c];
            const int64_t base = p * v.inner;
            for (int64_t i = base; i < base + v.inner; ++i)
              if constexpr (kTrain) {
                gxp[i] = scalar_t(a * (gfun(i, c) + b * xc(i, c) + d));
              } else {
                gxp[i] = scalar_t(a * gfun(i, c));
              }
          }
        });
      }
      };
      dispatch_bool(training, apply);
      }
      };
      if (x_is_output) {
        body(std::integral_constant<int, kOutput>{});
      } else if (recompute) {
        body(std::integral_constant<int, kRecompute>{});
      } else {
        body(std::integral_constant<int, kSaved>{});
      }
    });
  });
  if (output_mask[1]) gw = gw.to(param_dtype);
  if (output_mask[2]) gb = gb.to(param_dtype);
  return {gx, gw, gb};
}

namespace {

// A CPU tensor's values as doubles, in memory order of its contiguous form.
std::vector<double> values_of(const at::Tensor& t) {
  const at::Tensor c = t.detach().contiguous();
  std::vector<double> out(static_cast<size_t>(c.numel()));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.scalar_type(), "values_of", [&] {
    const scalar_t* p = c.const_data_ptr<scalar_t>();
    for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<double>(p[i]);
  });
  return out;
}

}  // namespace

bool batch_norm_output_invertible(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                  const std::optional<at::Tensor>& bias, bool training,
                                  int64_t activation, double negative_slope) {
  constexpr double kMinScale = 0.1, kMaxShiftPerScale = 10.0, kMinSlope = 1e-3;
  const auto dtype = x.scalar_type();
  if (!training || static_cast<Activation>(activation) != Activation::kLeakyRelu ||
      !(negative_slope >= kMinSlope) || (dtype != at::kFloat && dtype != at::kDouble) ||
      !weight.has_value() || !weight->defined() || weight->numel() == 0 ||
      weight->device().type() != at::kCPU)
    return false;
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias && (bias->numel() != weight->numel() || bias->device().type() != at::kCPU))
    return false;
  // plain loops over the C values, not a chain of tensor ops each dispatched
  const std::vector<double> w = values_of(*weight);
  const std::vector<double> b = has_bias ? values_of(*bias) : std::vector<double>(w.size(), 0.0);
  for (size_t c = 0; c < w.size(); ++c) {
    // false for a NaN scale or shift too
    if (!(std::abs(w[c]) >= kMinScale && std::abs(b[c]) <= kMaxShiftPerScale * std::abs(w[c])))
      return false;
  }
  return true;
}

bool batch_norm_keeps_output(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                             const std::optional<at::Tensor>& bias, bool training,
                             int64_t activation, double negative_slope, const at::Tensor& var,
                             const at::Tensor& invstd) {
  constexpr double kMinSpread = 0.25;  // var * invstd^2: x_hat's variance
  if (!batch_norm_output_invertible(x, weight, bias, training, activation, negative_slope) ||
      var.numel() != weight->numel() || invstd.numel() != var.numel())
    return false;
  const std::vector<double> v = values_of(var), is = values_of(invstd);
  for (size_t c = 0; c < v.size(); ++c)
    if (!(v[c] * is[c] * is[c] >= kMinSpread)) return false;
  return true;
}

at::Tensor batch_norm_input_from_output(const at::Tensor& y,
                                        const std::optional<at::Tensor>& weight,
                                        const std::optional<at::Tensor>& bias,
                                        const at::Tensor& mean, const at::Tensor& invstd,
                                        double negative_slope) {
  std::vector<int64_t> shape(y.dim(), 1);
  shape[1] = y.size(1);
  at::Tensor z = at::where(y > 0, y, y / negative_slope);  // leaky_relu's input
  if (bias.has_value() && bias->defined()) z = z - bias->view(shape);
  const at::Tensor scale = weight.has_value() && weight->defined() ? *weight * invstd : invstd;
  return z / scale.view(shape) + mean.view(shape);
}

}  // namespace genkern::cpu
