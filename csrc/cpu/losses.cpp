// Fused GAN and VAE losses on the CPU. The per-element math is genkern/losses.h (shared with
// CUDA). One pass per input computes the term, its derivative (written to a fresh gradient
// tensor, never into the input) and the sum. Deterministic: fixed chunks of kChunk elements, a
// float64 partial sum per chunk, the partials summed in chunk order after the parallel loop, so
// the bits depend neither on the thread count nor on scheduling.
#include "losses.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Dispatch.h>
#include <ATen/EmptyTensor.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>
#include <mutex>
#include <type_traits>
#include <vector>

#include "cpu_clones.h"
#include "dispatch_bool.h"
#include "genkern/losses.h"
#include "vec_math.h"

namespace genkern::cpu {
namespace {

constexpr int64_t kChunk = 4096;
constexpr int64_t kGrain = 4;  // chunks per task at least: small inputs stay on one thread

int64_t num_chunks(int64_t n) { return (n + kChunk - 1) / kChunk; }

// Fresh contiguous CPU tensors, without at::empty's trip through the dispatcher (a few tenths of
// a microsecond each, which a 4096-logit loss notices): these are the CPU kernels.
at::Tensor empty_cpu(const at::Tensor& like) {
  return at::detail::empty_cpu(like.sizes(), like.scalar_type(), false, std::nullopt);
}

// A 0-dim float32/float64 tensor holding v (the loss dtypes).
at::Tensor scalar_cpu(double v, at::ScalarType dtype) {
  at::Tensor out = at::detail::empty_cpu({}, dtype, false, std::nullopt);
  if (dtype == at::kDouble)
    *out.data_ptr<double>() = v;
  else
    *out.data_ptr<float>() = static_cast<float>(v);
  return out;
}

// Sub-blocks of a chunk: a vectorizable pass writes the per-element values of kSub elements to a
// buffer, which is then summed in float64 over kLanes fixed lanes (the compiler does not
// vectorize a floating-point reduction itself: that would reorder it). 16 lanes are four
// independent 4-wide AVX2 accumulators: the sum is not bound by the latency of one add chain.
constexpr int64_t kSub = 256;
constexpr int kLanes = 16;

// The per-element loops are GK_CPU_CLONES (cpu_clones.h): they vectorize 8 (or 16) floats wide,
// the polynomials with fused multiply-adds.

template <typename scalar_t>
using opmath = at::opmath_type<scalar_t>;

// e[j] = exp_neg_abs(x[j]) for j < len: the first of the two loops of a term that reads it
// (genkern/losses.h, exp_neg_abs).
template <typename scalar_t>
GK_CPU_CLONES void exp_neg_abs_fill(const scalar_t* __restrict__ x,
                                    opmath<scalar_t>* __restrict__ e, int64_t len) {
  for (int64_t j = 0; j < len; ++j) e[j] = exp_neg_abs(opmath<scalar_t>(x[j]));
}

// buf[j] = term(x[j]) and, when G, g[j] = gs * term'(x[j]), for j < len <= kSub. No control
// flow: it vectorizes.
template <LossTerm K, typename scalar_t, bool G>
GK_CPU_CLONES void gan_fill(const scalar_t* __restrict__ x, scalar_t* __restrict__ g,
                            opmath<scalar_t>* __restrict__ buf, int64_t len,
                            opmath<scalar_t> gs) {
  using opmath_t = opmath<scalar_t>;
  opmath_t e[kSub];
  if constexpr (kTermUsesExp<K>) exp_neg_abs_fill(x, e, len);
  for (int64_t j = 0; j < len; ++j) {
    opmath_t d;
    buf[j] = loss_term_given_exp<K, opmath_t>(opmath_t(x[j]), kTermUsesExp<K> ? e[j] : 0, &d);
    if constexpr (G) g[j] = static_cast<scalar_t>(d * gs);
  }
}

template <ReconLoss R, typename scalar_t, bool GX, bool GT>
GK_CPU_CLONES void recon_fill(const scalar_t* __restrict__ x, const scalar_t* __restrict__ t,
                              scalar_t* __restrict__ gx, scalar_t* __restrict__ gt,
                              opmath<scalar_t>* __restrict__ buf, int64_t len,
                              opmath<scalar_t> s) {
  using opmath_t = opmath<scalar_t>;
  opmath_t e[kSub];
  if constexpr (kReconUsesExp<R>) exp_neg_abs_fill(x, e, len);
  for (int64_t j = 0; j < len; ++j) {
    opmath_t dx, dt;
    const opmath_t ej = kReconUsesExp<R> ? e[j] : 0;
    buf[j] = recon_term_given_exp<R, opmath_t>(opmath_t(x[j]), opmath_t(t[j]), ej, &dx, &dt);
    if constexpr (GX) gx[j] = static_cast<scalar_t>(dx * s);
    if constexpr (GT) gt[j] = static_cast<scalar_t>(dt * s);
  }
}

// Whether any of x[0, n) lies outside [0, 1] (NaN does not: it propagates): BCE on
// probabilities refuses such an input, as torch's does.
template <typename scalar_t>
GK_CPU_CLONES bool outside_unit_interval(const scalar_t* __restrict__ x, int64_t n) {
  bool outside = false;
  for (int64_t j = 0; j < n; ++j) {
    const float v = static_cast<float>(x[j]);
    outside |= (v < 0.0f) | (v > 1.0f);
  }
  return outside;
}

template <typename scalar_t>
GK_CPU_CLONES void kl_fill(const scalar_t* __restrict__ m, const scalar_t* __restrict__ lv,
                           scalar_t* __restrict__ gm, scalar_t* __restrict__ glv,
                           opmath<scalar_t>* __restrict__ buf, int64_t len, opmath<scalar_t> s) {
  using opmath_t = opmath<scalar_t>;
  for (int64_t j = 0; j < len; ++j) {
    opmath_t dm, dl;
    buf[j] = kl_term<opmath_t>(opmath_t(m[j]), opmath_t(lv[j]), &dm, &dl);
    gm[j] = static_cast<scalar_t>(dm * s);
    glv[j] = static_cast<scalar_t>(dl * s);
  }
}

template <typename opmath_t>
GK_CPU_CLONES double sum_buffer(const opmath_t* __restrict__ buf, int64_t len) {
  double a[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= len; j += kLanes) {
    for (int k = 0; k < kLanes; ++k) a[k] += double(buf[j + k]);
  }
  for (; j < len; ++j) a[0] += double(buf[j]);
  for (int w = kLanes / 2; w > 0; w /= 2) {
    for (int k = 0; k < w; ++k) a[k] += a[k + w];
  }
  return a[0];
}

// The float64 sum over [i0, i1) of the values fill(s, len, buf) writes for elements [s, s + len).
template <typename opmath_t, typename Fill>
double chunk_sum(int64_t i0, int64_t i1, Fill&& fill) {
  opmath_t buf[kSub];
  double acc = 0;
  for (int64_t s = i0; s < i1; s += kSub) {
    const int64_t len = std::min(kSub, i1 - s);
    fill(s, len, buf);
    acc += sum_buffer(buf, len);
  }
  return acc;
}

double ordered_sum(const std::vector<double>& partial) {
  double s = 0;
  for (double p : partial) s += p;
  return s;
}

at::ScalarType loss_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// sum over x of term(x); grad (when defined) receives gscale * term'(x).
double term_sum(const at::Tensor& x, LossTerm term, at::Tensor* grad, double gscale) {
  const int64_t n = x.numel();
  std::vector<double> partial(num_chunks(n), 0.0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "gan_loss", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* gp = grad ? grad->data_ptr<scalar_t>() : nullptr;
    const opmath_t gs = static_cast<opmath_t>(gscale);
    dispatch_loss_term(term, [&](auto tag) {
      constexpr LossTerm K = decltype(tag)::value;
      dispatch_bool(gp != nullptr, [&](auto need_grad) {
        constexpr bool G = decltype(need_grad)::value;
        at::parallel_for(0, num_chunks(n), kGrain, [&](int64_t c0, int64_t c1) {
          for (int64_t c = c0; c < c1; ++c) {
            const int64_t i0 = c * kChunk, i1 = std::min(n, i0 + kChunk);
            partial[c] = chunk_sum<opmath_t>(i0, i1, [&](int64_t s, int64_t len, opmath_t* buf) {
              gan_fill<K, scalar_t, G>(xp + s, G ? gp + s : nullptr, buf, len, gs);
            });
          }
        });
      });
    });
  });
  return ordered_sum(partial);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> gan_loss_cpu(const std::optional<at::Tensor>& real,
                                                            const at::Tensor& fake,
                                                            int64_t real_term, int64_t fake_term,
                                                            bool need_grad_real,
                                                            bool need_grad_fake) {
  const bool has_real = real.has_value() && real->defined();
  const at::Tensor f = fake.contiguous();
  at::Tensor grad_real, grad_fake;
  double loss = 0;
  if (has_real) {
    const at::Tensor r = real->contiguous();
    const int64_t n = r.numel();
    if (need_grad_real) grad_real = empty_cpu(r);
    const double s = term_sum(r, static_cast<LossTerm>(real_term),
                              need_grad_real ? &grad_real : nullptr, 1.0 / double(n));
    loss += s / double(n);  // n == 0: nan, as torch's mean of an empty tensor
  }
  {
    const int64_t n = f.numel();
    if (need_grad_fake) grad_fake = empty_cpu(f);
    const double s = term_sum(f, static_cast<LossTerm>(fake_term),
                              need_grad_fake ? &grad_fake : nullptr, 1.0 / double(n));
    loss += s / double(n);
  }
  at::Tensor out = scalar_cpu(loss, loss_dtype(fake.scalar_type()));
  return {out, grad_real, grad_fake};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
vae_loss_cpu(const at::Tensor& recon, const at::Tensor& target, const at::Tensor& mu,
             const at::Tensor& logvar, int64_t recon_loss, double beta, double scale,
             std::array<bool, 4> mask) {
  const at::Tensor x = recon.contiguous(), t = target.contiguous();
  const at::Tensor m = mu.contiguous(), lv = logvar.contiguous();
  at::Tensor gx = mask[0] ? empty_cpu(x) : at::Tensor();
  at::Tensor gt = mask[1] ? empty_cpu(t) : at::Tensor();
  at::Tensor gm = mask[2] ? empty_cpu(m) : at::Tensor();
  at::Tensor glv = mask[3] ? empty_cpu(lv) : at::Tensor();

  // reconstruction term
  const int64_t n = x.numel();
  std::vector<double> partial(num_chunks(n), 0.0);
  std::vector<char> outside(num_chunks(n), 0);  // BCE on probabilities: a chunk outside [0, 1]
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "vae_recon", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* tp = t.data_ptr<scalar_t>();
    scalar_t* gxp = mask[0] ? gx.data_ptr<scalar_t>() : nullptr;
    scalar_t* gtp = mask[1] ? gt.data_ptr<scalar_t>() : nullptr;
    const opmath_t s = static_cast<opmath_t>(scale);
    dispatch_recon_loss(static_cast<ReconLoss>(recon_loss), [&](auto tag) {
      constexpr ReconLoss R = decltype(tag)::value;
      dispatch_bool(gxp != nullptr, [&](auto need_gx) {
        dispatch_bool(gtp != nullptr, [&](auto need_gt) {
          constexpr bool GX = decltype(need_gx)::value, GT = decltype(need_gt)::value;
          at::parallel_for(0, num_chunks(n), kGrain, [&](int64_t c0, int64_t c1) {
            for (int64_t c = c0; c < c1; ++c) {
              const int64_t i0 = c * kChunk, i1 = std::min(n, i0 + kChunk);
              partial[c] = chunk_sum<opmath_t>(i0, i1, [&](int64_t q, int64_t len, opmath_t* buf) {
                recon_fill<R, scalar_t, GX, GT>(xp + q, tp + q, GX ? gxp + q : nullptr,
                                                GT ? gtp + q : nullptr, buf, len, s);
              });
              if constexpr (R == ReconLoss::kBce)
                outside[c] = outside_unit_interval(xp + i0, i1 - i0);
            }
          });
        });
      });
    });
  });
  TORCH_CHECK(std::find(outside.begin(), outside.end(), 1) == outside.end(),
              "all elements of input should be between 0 and 1");
  const double rec = ordered_sum(partial) * scale;

  // KL term
  const int64_t k = m.numel();
  std::vector<double> kpartial(num_chunks(k), 0.0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, m.scalar_type(), "vae_kl", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* mp = m.data_ptr<scalar_t>();
    const scalar_t* lp = lv.data_ptr<scalar_t>();
    scalar_t* gmp = mask[2] ? gm.data_ptr<scalar_t>() : nullptr;
    scalar_t* glp = mask[3] ? glv.data_ptr<scalar_t>() : nullptr;
    const opmath_t s = static_cast<opmath_t>(scale);
    at::parallel_for(0, num_chunks(k), kGrain, [&](int64_t c0, int64_t c1) {
      scalar_t gbuf[2][kSub];  // the gradients nobody asked for land here
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t i0 = c * kChunk, i1 = std::min(k, i0 + kChunk);
        kpartial[c] = chunk_sum<opmath_t>(i0, i1, [&](int64_t q, int64_t len, opmath_t* buf) {
          kl_fill<scalar_t>(mp + q, lp + q, gmp ? gmp + q : gbuf[0], glp ? glp + q : gbuf[1], buf,
                            len, s);
        });
      }
    });
  });
  const double kl = ordered_sum(kpartial) * scale;

  const bool f64 = x.scalar_type() == at::kDouble || m.scalar_type() == at::kDouble;
  const auto dtype = f64 ? at::kDouble : at::kFloat;
  return {scalar_cpu(rec + beta * kl, dtype), scalar_cpu(rec, dtype), scalar_cpu(kl, dtype), gx,
          gt, gm, glv};
}

namespace {

// ---- reparameterize -------------------------------------------------------------------------

constexpr int64_t kNormGroups = 64;              // Philox calls per block
constexpr int64_t kNormBlock = 4 * kNormGroups;  // normals per block
// Blocks per task at least: drawing the normals (Philox + Box-Muller) pays for a second thread from
// 4096 elements on (128x128 forward + backward, 2-core Xeon, drawn 59.7 -> 49.4 us at 16); the
// plain fill with a given eps from 8192. That depends on the core: on a 2-core Zen 1 (exp ~4x
// slower per element) 128x128 forward 41.6 -> 27.7 us at 32 blocks instead of 128, where the Xeon
// had measured 35.2 us at 128 and 39.0 split (a parallel region's wake-up cost more than its 8 us
// fill). The machines this project runs on now are the Zen 1s.
constexpr int64_t kDrawGrain = 16;
constexpr int64_t kFillGrain = 32;

// The standard normals of block b of the stream keyed by (k0, k1): element b * kNormBlock +
// r * kNormGroups + j is normal r of Philox counter (b * kNormGroups + j, 0, 0, 0), Box-Muller on
// its words (0, 1) (normals 0 and 1) and (2, 3) (normals 2 and 3). Each element's value depends
// on its index alone: not on the thread count, nor on where a call's range starts.
GK_CPU_CLONES void normal_block(int64_t b, uint32_t k0, uint32_t k1, float* __restrict__ out) {
  uint32_t w[4][kNormGroups];
  for (int64_t j = 0; j < kNormGroups; ++j) {
    const uint64_t g = static_cast<uint64_t>(b * kNormGroups + j);
    uint32_t o[4];
    vmath::philox4x32_10(static_cast<uint32_t>(g), static_cast<uint32_t>(g >> 32), 0, 0, k0, k1,
                         o);
    w[0][j] = o[0];
    w[1][j] = o[1];
    w[2][j] = o[2];
    w[3][j] = o[3];
  }
  for (int p = 0; p < 2; ++p) {
    for (int64_t j = 0; j < kNormGroups; ++j) {
      const float r = std::sqrt(-2.0f * vmath::log_unit(vmath::uniform_open0(w[2 * p][j])));
      float sn, cs;
      vmath::sincos_turns(vmath::uniform_open1(w[2 * p + 1][j]), &sn, &cs);
      out[2 * p * kNormGroups + j] = r * cs;
      out[(2 * p + 1) * kNormGroups + j] = r * sn;
    }
  }
}

// float64: two Philox calls per group (counter word 2 = 0, 1), 53-bit uniforms from word pairs,
// the math library's log, sin and cos.
void normal_block(int64_t b, uint32_t k0, uint32_t k1, double* out) {
  constexpr double kTwoPi = 6.28318530717958647692, kUlp = 1.0 / 9007199254740992.0;  // 2^-53
  for (int64_t j = 0; j < kNormGroups; ++j) {
    const uint64_t g = static_cast<uint64_t>(b * kNormGroups + j);
    for (uint32_t p = 0; p < 2; ++p) {
      uint32_t o[4];
      vmath::philox4x32_10(static_cast<uint32_t>(g), static_cast<uint32_t>(g >> 32), p, 0, k0,
                           k1, o);
      const double u1 = double(((uint64_t{o[0]} << 32 | o[1]) >> 11) + 1) * kUlp;  // (0, 1]
      const double u2 = double((uint64_t{o[2]} << 32 | o[3]) >> 11) * kUlp;        // [0, 1)
      const double r = std::sqrt(-2.0 * std::log(u1));
      out[2 * p * kNormGroups + j] = r * std::cos(kTwoPi * u2);
      out[(2 * p + 1) * kNormGroups + j] = r * std::sin(kTwoPi * u2);
    }
  }
}

// z = mu + eps * s with s = exp(logvar / 2); h = eps * s / 2 (d z / d logvar) and sd = s when
// asked.
template <typename scalar_t, typename eps_t, bool H, bool SD>
GK_CPU_CLONES void reparam_fill(const scalar_t* __restrict__ m, const scalar_t* __restrict__ lv,
                                const eps_t* __restrict__ e, scalar_t* __restrict__ z,
                                scalar_t* __restrict__ h, scalar_t* __restrict__ sd, int64_t len) {
  using opmath_t = opmath<scalar_t>;
  for (int64_t j = 0; j < len; ++j) {
    const opmath_t s = exp_full<opmath_t>(opmath_t(0.5) * opmath_t(lv[j]));
    const opmath_t es = opmath_t(e[j]) * s;
    z[j] = static_cast<scalar_t>(opmath_t(m[j]) + es);
    if constexpr (H) h[j] = static_cast<scalar_t>(opmath_t(0.5) * es);
    if constexpr (SD) sd[j] = static_cast<scalar_t>(s);
  }
}

}  // namespace

uint64_t philox_key_cpu(const std::optional<at::Generator>& generator) {
  auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(
      generator, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  return gen->random64();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> reparameterize_fused_cpu(
    const at::Tensor& mu, const at::Tensor& logvar, const std::optional<at::Tensor>& eps,
    uint64_t key, bool need_h, bool need_sd) {
  const at::Tensor m = mu.contiguous(), lv = logvar.contiguous();
  const bool drawn = !(eps.has_value() && eps->defined());
  const at::Tensor e = drawn ? at::Tensor() : eps->contiguous();
  at::Tensor z = empty_cpu(m);
  at::Tensor h = need_h ? empty_cpu(m) : at::Tensor();
  at::Tensor sd = need_sd ? empty_cpu(m) : at::Tensor();
  const int64_t n = m.numel();
  const int64_t blocks = (n + kNormBlock - 1) / kNormBlock;
  const auto k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, m.scalar_type(), "reparam", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* mp = m.data_ptr<scalar_t>();
    const scalar_t* lp = lv.data_ptr<scalar_t>();
    const scalar_t* ep = drawn ? nullptr : e.data_ptr<scalar_t>();
    scalar_t* zp = z.data_ptr<scalar_t>();
    scalar_t* hp = need_h ? h.data_ptr<scalar_t>() : nullptr;
    scalar_t* sp = need_sd ? sd.data_ptr<scalar_t>() : nullptr;
    dispatch_bool(need_h, [&](auto need_h_tag) {
      dispatch_bool(need_sd, [&](auto need_sd_tag) {
        constexpr bool H = decltype(need_h_tag)::value, SD = decltype(need_sd_tag)::value;
        at::parallel_for(0, blocks, drawn ? kDrawGrain : kFillGrain, [&](int64_t b0, int64_t b1) {
          opmath_t buf[kNormBlock];
          for (int64_t b = b0; b < b1; ++b) {
            const int64_t i = b * kNormBlock, len = std::min(kNormBlock, n - i);
            scalar_t* hb = H ? hp + i : nullptr;
            scalar_t* sb = SD ? sp + i : nullptr;
            if (drawn) {
              normal_block(b, k0, k1, buf);
              reparam_fill<scalar_t, opmath_t, H, SD>(mp + i, lp + i, buf, zp + i, hb, sb, len);
            } else {
              reparam_fill<scalar_t, scalar_t, H, SD>(mp + i, lp + i, ep + i, zp + i, hb, sb, len);
            }
          }
        });
      });
    });
  });
  return {z, h, sd};
}

std::tuple<at::Tensor, at::Tensor> reparameterize_cpu(const at::Tensor& mu,
                                                      const at::Tensor& logvar,
                                                      const at::Tensor& eps) {
  auto [z, h, sd] = reparameterize_fused_cpu(mu, logvar, eps, 0, false, true);
  return {z, sd};
}

}  // namespace genkern::cpu
