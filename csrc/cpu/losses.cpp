// Fused GAN and VAE losses on the CPU. The per-element math is genkern/losses.h (shared with
// CUDA). One pass per input computes the term, its derivative (written to a fresh gradient
// tensor, never into the input) and the sum. Deterministic: fixed chunks of kChunk elements, a
// float64 partial sum per chunk, the partials summed in chunk order after the parallel loop, so
// the bits depend neither on the thread count nor on scheduling.
#include "losses.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "genkern/losses.h"

namespace genkern::cpu {
namespace {

constexpr int64_t kChunk = 4096;
constexpr int64_t kGrain = 4;  // chunks per task at least: small inputs stay on one thread

int64_t num_chunks(int64_t n) { return (n + kChunk - 1) / kChunk; }

// The per-element loops are compiled twice, for AVX2 and for the baseline ISA, and picked at load
// time by the CPU (GCC's target_clones): the loops vectorize 8 floats wide where AVX2 exists.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define GK_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define GK_CPU_CLONES
#endif

template <typename scalar_t>
using opmath = at::opmath_type<scalar_t>;

// buf[j] = term(x[j]) and, when G, g[j] = gs * term'(x[j]), for j < len. No control flow: it
// vectorizes.
template <LossTerm K, typename scalar_t, bool G>
GK_CPU_CLONES void gan_fill(const scalar_t* __restrict__ x, scalar_t* __restrict__ g,
                            opmath<scalar_t>* __restrict__ buf, int64_t len,
                            opmath<scalar_t> gs) {
  using opmath_t = opmath<scalar_t>;
  for (int64_t j = 0; j < len; ++j) {
    opmath_t d;
    buf[j] = loss_term<K, opmath_t>(opmath_t(x[j]), &d);
    if constexpr (G) g[j] = static_cast<scalar_t>(d * gs);
  }
}

template <ReconLoss R, typename scalar_t, bool GX, bool GT>
GK_CPU_CLONES void recon_fill(const scalar_t* __restrict__ x, const scalar_t* __restrict__ t,
                              scalar_t* __restrict__ gx, scalar_t* __restrict__ gt,
                              opmath<scalar_t>* __restrict__ buf, int64_t len,
                              opmath<scalar_t> s) {
  using opmath_t = opmath<scalar_t>;
  for (int64_t j = 0; j < len; ++j) {
    opmath_t dx, dt;
    buf[j] = recon_term<R, opmath_t>(opmath_t(x[j]), opmath_t(t[j]), &dx, &dt);
    if constexpr (GX) gx[j] = static_cast<scalar_t>(dx * s);
    if constexpr (GT) gt[j] = static_cast<scalar_t>(dt * s);
  }
}

// Calls f(std::integral_constant<bool, b>{}) for the runtime bool b: loops specialized on it.
template <typename F>
void dispatch_bool(bool b, F&& f) {
  if (b) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

// Sub-blocks of a chunk: a vectorizable pass writes the per-element values of kSub elements to a
// buffer, which is then summed in float64 over 4 fixed lanes (the compiler does not vectorize a
// floating-point reduction itself: that would reorder it).
constexpr int64_t kSub = 256;

template <typename opmath_t>
double sum_buffer(const opmath_t* buf, int64_t len) {
  double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  int64_t j = 0;
  for (; j + 4 <= len; j += 4) {
    a0 += double(buf[j]);
    a1 += double(buf[j + 1]);
    a2 += double(buf[j + 2]);
    a3 += double(buf[j + 3]);
  }
  for (; j < len; ++j) a0 += double(buf[j]);
  return (a0 + a1) + (a2 + a3);
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
    if (need_grad_real) grad_real = at::empty(r.sizes(), r.options());
    const double s = term_sum(r, static_cast<LossTerm>(real_term),
                              need_grad_real ? &grad_real : nullptr, 1.0 / double(n));
    loss += s / double(n);  // n == 0: nan, as torch's mean of an empty tensor
  }
  {
    const int64_t n = f.numel();
    if (need_grad_fake) grad_fake = at::empty(f.sizes(), f.options());
    const double s = term_sum(f, static_cast<LossTerm>(fake_term),
                              need_grad_fake ? &grad_fake : nullptr, 1.0 / double(n));
    loss += s / double(n);
  }
  at::Tensor out = at::scalar_tensor(loss, fake.options().dtype(loss_dtype(fake.scalar_type())));
  return {out, grad_real, grad_fake};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
vae_loss_cpu(const at::Tensor& recon, const at::Tensor& target, const at::Tensor& mu,
             const at::Tensor& logvar, int64_t recon_loss, double beta, double scale,
             std::array<bool, 4> mask) {
  const at::Tensor x = recon.contiguous(), t = target.contiguous();
  const at::Tensor m = mu.contiguous(), lv = logvar.contiguous();
  at::Tensor gx = mask[0] ? at::empty(x.sizes(), x.options()) : at::Tensor();
  at::Tensor gt = mask[1] ? at::empty(t.sizes(), t.options()) : at::Tensor();
  at::Tensor gm = mask[2] ? at::empty(m.sizes(), m.options()) : at::Tensor();
  at::Tensor glv = mask[3] ? at::empty(lv.sizes(), lv.options()) : at::Tensor();

  // reconstruction term
  const int64_t n = x.numel();
  std::vector<double> partial(num_chunks(n), 0.0);
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
            }
          });
        });
      });
    });
  });
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
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t i0 = c * kChunk, i1 = std::min(k, i0 + kChunk);
        double acc = 0;
        for (int64_t i = i0; i < i1; ++i) {
          opmath_t dm, dl;
          acc += static_cast<double>(kl_term<opmath_t>(opmath_t(mp[i]), opmath_t(lp[i]), &dm, &dl));
          if (gmp) gmp[i] = static_cast<scalar_t>(dm * s);
          if (glp) glp[i] = static_cast<scalar_t>(dl * s);
        }
        kpartial[c] = acc;
      }
    });
  });
  const double kl = ordered_sum(kpartial) * scale;

  const auto opts = x.options().dtype(
      (x.scalar_type() == at::kDouble || m.scalar_type() == at::kDouble) ? at::kDouble : at::kFloat);
  return {at::scalar_tensor(rec + beta * kl, opts), at::scalar_tensor(rec, opts),
          at::scalar_tensor(kl, opts), gx, gt, gm, glv};
}

std::tuple<at::Tensor, at::Tensor> reparameterize_cpu(const at::Tensor& mu, const at::Tensor& logvar,
                                                      const at::Tensor& eps) {
  const at::Tensor m = mu.contiguous(), lv = logvar.contiguous(), e = eps.contiguous();
  at::Tensor z = at::empty(m.sizes(), m.options());
  at::Tensor sd = at::empty(m.sizes(), m.options());
  const int64_t n = m.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, m.scalar_type(), "reparam", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* mp = m.data_ptr<scalar_t>();
    const scalar_t* lp = lv.data_ptr<scalar_t>();
    const scalar_t* ep = e.data_ptr<scalar_t>();
    scalar_t* zp = z.data_ptr<scalar_t>();
    scalar_t* sp = sd.data_ptr<scalar_t>();
    at::parallel_for(0, n, 16384, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const opmath_t s = std::exp(opmath_t(0.5) * opmath_t(lp[i]));
        sp[i] = static_cast<scalar_t>(s);
        zp[i] = static_cast<scalar_t>(opmath_t(mp[i]) + opmath_t(ep[i]) * s);
      }
    });
  });
  return {z, sd};
}

}  // namespace genkern::cpu
