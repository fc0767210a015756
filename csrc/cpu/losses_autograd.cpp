#include "losses_autograd.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/SavedTensorHooks.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/binary_cross_entropy.h>
#include <ATen/ops/binary_cross_entropy_with_logits.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/exp.h>
#include <ATen/ops/isinf.h>
#include <ATen/ops/log_sigmoid.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/accumulate.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/graph_task.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>

#include "composite_grads.h"
#include "cpu_clones.h"
#include "genkern/losses.h"
#include "losses.h"
#include "vmap_batched.h"

namespace genkern::cpu {
namespace {

using torch::autograd::variable_list;

// The value of a one-element CPU float32/float64 tensor, read in place (item() goes through the
// dispatcher: a few microseconds that a 4096-logit loss's backward notices).
std::optional<double> cpu_scalar(const at::Tensor& g) {
  // (not a negative view, whose memory holds -g, nor a zero tensor, which has none: found by a
  // fuzz, conj().imag of a complex g flipped the gradient's sign)
  if (!g.defined() || !g.device().is_cpu() || is_vmap_batched(g) || g.numel() != 1 ||
      g.is_neg() || g._is_zerotensor())
    return std::nullopt;
  if (g.scalar_type() == at::kFloat) return double(*g.const_data_ptr<float>());
  if (g.scalar_type() == at::kDouble) return *g.const_data_ptr<double>();
  return g.item<double>();
}

// The incoming gradient of loss.backward(): a CPU 1.
bool is_cpu_one(const at::Tensor& g) { return cpu_scalar(g) == 1.0; }

// p[i] *= k, or p[i] *= q[i], for i < n: vectorized (k a value, not a reference the stores might
// alias).
template <typename scalar_t>
GK_CPU_CLONES void scale_span(scalar_t* __restrict__ p, int64_t n, scalar_t k) {
  for (int64_t i = 0; i < n; ++i) p[i] *= k;
}
template <typename scalar_t>
GK_CPU_CLONES void mul_span(scalar_t* __restrict__ p, int64_t n, const scalar_t* __restrict__ q) {
  for (int64_t i = 0; i < n; ++i) p[i] *= q[i];
}

// t *= s for a contiguous float32/float64 t and a CPU s of its dtype, 0-dim or contiguous of t's
// sizes (s never t: t is a private buffer), in one plain loop (what mul_ computes, without
// TensorIterator's setup); else t.mul_(s).
void scale_in_place(at::Tensor& t, const at::Tensor& s) {
  const bool scalar = s.dim() == 0;
  if (!s.device().is_cpu() || s.is_neg() || s._is_zerotensor() ||  // (memory: -s, none)
      s.scalar_type() != t.scalar_type() || !t.is_contiguous() ||
      (t.scalar_type() != at::kFloat && t.scalar_type() != at::kDouble) ||
      !(scalar || (s.sizes() == t.sizes() && s.is_contiguous()))) {
    t.mul_(s);
    return;
  }
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "scale_in_place", [&] {
    scalar_t* p = t.data_ptr<scalar_t>();
    const scalar_t* q = s.const_data_ptr<scalar_t>();
    at::parallel_for(0, t.numel(), 65536, [p, q, scalar](int64_t i0, int64_t i1) {
      if (scalar)
        scale_span(p + i0, i1 - i0, *q);
      else
        mul_span(p + i0, i1 - i0, q + i0);
    });
  });
}

// A gradient the forward pass computed into a fresh buffer of ours, saved for backward, which
// multiplies it by the incoming gradient g (a loss's 0-dim one, or one of the saved shape):
// returned as it is when g is a CPU 1 (loss.backward()) and the backward frees the graph (a
// copy under retain_graph), and scaled in place when nothing else can see the buffer (no
// saved-tensor hooks took it when it was saved, no other reference, and this backward frees the
// graph: not retain_graph); else saved * g. Either shortcut saves a pass and an allocation the
// size of the input.
struct SavedGrad {
  torch::autograd::SavedVariable var;
  bool private_buffer = false;

  void save(const at::Tensor& grad) {
    var = torch::autograd::SavedVariable(grad, false);
    private_buffer = at::SavedTensorDefaultHooks::get_tls_state().stack.empty();
  }

  // g_is_one: is_cpu_one(g), asked once per backward.
  at::Tensor scaled_by(const at::Tensor& g, bool g_is_one) {
    at::Tensor saved = var.unpack();
    if (!saved.defined()) return saved;
    // a retained graph keeps the buffer for the next backward: the gradient handed out must be
    // a tensor of its own, which hooks and callers may change in place
    const bool kept = torch::autograd::get_current_graph_task_keep_graph();
    if (g_is_one) return kept ? saved.clone() : saved;
    if (!g.device().is_cpu() || is_vmap_batched(g)) return saved * g;  // (ATen's, vmap's)
    const bool alone = saved.use_count() == 2 && saved.storage().use_count() == 1;  // var + here
    const bool same_result = g.dim() == 0 || (g.sizes() == saved.sizes() &&
                                              g.scalar_type() == saved.scalar_type());
    if (private_buffer && alone && same_result && !kept) {
      scale_in_place(saved, g);
      return saved;
    }
    return saved * g;
  }

  void release() { var.reset_data(); }
};

// ---- Second derivatives (create_graph=True: unrolled GANs, consensus optimization, penalties
// on a loss's gradient): the backward takes stock's composite of the loss, recomputed from the
// saved inputs and differentiated by autograd (composite_grads.h); its derivative is the
// kernels' at every finite input. The Python twins: genkern/ops/losses.py, _gan_value_torch and
// _vae_value_torch.

// x in the loss's accumulation dtype: float64 stays, the rest computes in float32.
at::Tensor accumulated(const at::Tensor& x, bool wide = false) {
  return x.to(wide || x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
}

// A GAN loss term, elementwise (genkern/losses.h, LossTerm).
at::Tensor stock_term(const at::Tensor& x, int64_t term) {
  switch (static_cast<LossTerm>(term)) {
    case LossTerm::kSoftplusNeg:
      return -at::log_sigmoid(x);
    case LossTerm::kSoftplusPos:
      return -at::log_sigmoid(-x);
    case LossTerm::kHingeReal:
      return at::relu(1 - x);
    case LossTerm::kHingeFake:
      return at::relu(1 + x);
    case LossTerm::kNeg:
      return -x;
    case LossTerm::kPos:
      return x;
    case LossTerm::kSqOne:
      return 0.5 * (x - 1).square();
    default:
      return 0.5 * x.square();
  }
}

// mean(real term) + mean(fake term); real undefined: the generator's loss.
at::Tensor stock_gan_loss(const at::Tensor& real, const at::Tensor& fake, int64_t real_term,
                          int64_t fake_term) {
  const at::Tensor f = stock_term(accumulated(fake), fake_term).mean();
  return real.defined() ? stock_term(accumulated(real), real_term).mean() + f : f;
}

// (total, recon term, kl) of vae_loss, scaled by `scale` (1 / batch for reduction="mean").
variable_list stock_vae_loss(const variable_list& in, int64_t recon_loss, double beta,
                             double scale) {
  bool wide = false;
  for (const auto& t : in) wide |= t.scalar_type() == at::kDouble;
  const at::Tensor x = accumulated(in[0], wide), t = accumulated(in[1], wide);
  const at::Tensor m = accumulated(in[2], wide), lv = accumulated(in[3], wide);
  at::Tensor rec;
  if (static_cast<ReconLoss>(recon_loss) == ReconLoss::kBceLogits)
    rec = at::binary_cross_entropy_with_logits(x, t, {}, {}, at::Reduction::Sum);
  else if (static_cast<ReconLoss>(recon_loss) == ReconLoss::kBce)
    rec = at::binary_cross_entropy(x, t, {}, at::Reduction::Sum);
  else
    rec = (x - t).square().sum();
  const at::Tensor kl = (-0.5 * (1 + lv - m.square() - lv.exp())).sum() * scale;
  rec = rec * scale;
  return {rec + beta * kl, rec, kl};
}

// The composites run in float32 / float64 whatever autocast says (stock's
// binary_cross_entropy refuses autocast; the forward's kernels ignore it).
struct NoAutocast {
  c10::impl::ExcludeDispatchKeyGuard guard{c10::autocast_dispatch_keyset};
};

// A new CPU tensor of these sizes and dtype (a floating one) holding v everywhere: one plain
// loop, what fill_ computes without TensorIterator's setup (a few microseconds that a loss of
// 4096 logits notices).
at::Tensor filled(at::IntArrayRef sizes, double v, at::ScalarType dtype) {
  at::Tensor t = at::empty(sizes, at::TensorOptions().dtype(dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "filled", [&] {
    scalar_t* p = t.data_ptr<scalar_t>();
    const auto value = static_cast<scalar_t>(v);
    at::parallel_for(0, t.numel(), 65536, [p, value](int64_t i0, int64_t i1) {
      std::fill(p + i0, p + i1, value);
    });
  });
  return t;
}

// d term / d x where it is a constant (wgan's terms, the hinge generator's), else 0. A loss of
// such terms is a mean's multiple, whose backward needs nothing of its forward: nothing is
// computed, saved or kept for it, and a second backward runs, as stock's -f.mean() (Python twin:
// genkern/ops/losses.py, _constant_slopes and _mean_grads).
double constant_slope(int64_t term) {
  const auto k = static_cast<LossTerm>(term);
  return k == LossTerm::kNeg ? -1.0 : k == LossTerm::kPos ? 1.0 : 0.0;
}

// The gradient of slope * mean(x), x of these sizes and dtype: slope g / n everywhere, in stock's
// order (a negation, then mean's division: its bits); by ATen's ops on g (differentiable in g
// with create_graph=True; a g under vmap, or a view whose memory is not its value) where g's
// value cannot be read in place.
struct MeanGrad {
  double slope = 0.0;
  std::vector<int64_t> sizes;
  at::ScalarType dtype = at::kFloat;

  MeanGrad() = default;
  MeanGrad(double s, const at::Tensor& x)
      : slope(s), sizes(x.sizes().vec()), dtype(x.scalar_type()) {}

  at::Tensor of(const at::Tensor& g) const {
    const int64_t n = c10::multiply_integers(sizes);
    const auto value = cpu_scalar(g);  // (loss.backward(), autograd.grad: one full, no ops on g)
    if (value.has_value() && !at::GradMode::is_enabled()) {
      const double s = slope < 0 ? -*value : *value;  // in g's dtype, as ATen's ops on it
      const double v = g.scalar_type() == at::kDouble ? s / double(n) : float(s) / float(n);
      return filled(sizes, v, dtype);
    }
    return ((slope < 0 ? -g : g) / n).to(dtype).expand(sizes).contiguous();
  }
};

// The GAN loss's backward as a plain autograd Node (not a torch::autograd::Function, whose
// CppNode bookkeeping costs ~10 us a call, as much as the loss of 4096 logits): it scales the
// gradients the forward pass produced, or with create_graph=True takes the composite. Edges:
// real's (when given), then fake's.
struct GanLossBackward : public torch::autograd::Node {
  SavedGrad grad_real, grad_fake;
  KeptInput real, fake;  // read only by the composite
  int64_t real_term = 0, fake_term = 0;
  bool has_real = false;
  bool constant = false;  // every term's derivative a constant: these instead of the above
  MeanGrad mean_real, mean_fake;

  std::string name() const override { return "GanLossBackward"; }

  variable_list apply(variable_list&& grads) override {
    variable_list out(has_real ? 2 : 1);  // undefined: no gradient flows
    if (!grads[0].defined()) return out;
    if (constant) {
      if (has_real && should_compute_output(0)) out[0] = mean_real.of(grads[0]);
      if (should_compute_output(has_real ? 1 : 0)) out.back() = mean_fake.of(grads[0]);
      return out;
    }
    if (at::GradMode::is_enabled()) return composite(grads[0]);
    const bool one = is_cpu_one(grads[0]);
    if (has_real) out[0] = grad_real.scaled_by(grads[0], one);
    out.back() = grad_fake.scaled_by(grads[0], one);
    return out;
  }

  variable_list composite(const at::Tensor& g) {
    NoAutocast no_autocast;
    const std::vector<bool> mask{has_real && should_compute_output(0),
                                 should_compute_output(has_real ? 1 : 0)};
    const auto loss = [this](const variable_list& in) -> variable_list {
      return {stock_gan_loss(in[0], in[1], real_term, fake_term)};
    };
    const variable_list in{has_real ? real.unpack() : at::Tensor(), fake.unpack()};
    variable_list out = composite_grads(loss, in, mask, {g});
    return has_real ? out : variable_list{out[1]};
  }

  void release_variables() override {
    grad_real.release();
    grad_fake.release();
    real.reset();
    fake.reset();
  }
};

// The VAE loss's backward: outputs (total, recon, kl), edges recon, target, mu, logvar. The
// gradients of the forward pass are scaled by d total / d recon + d recon-output (recon, target)
// and beta d total + d kl (mu, logvar); an output nobody used has an undefined gradient. With
// create_graph=True, the composite.
struct VaeLossBackward : public torch::autograd::Node {
  std::array<SavedGrad, 4> grads;
  std::array<KeptInput, 4> inputs;  // read only by the composite
  int64_t recon_loss = 0;
  double beta = 1.0, scale = 1.0;

  std::string name() const override { return "VaeLossBackward"; }

  variable_list apply(variable_list&& g) override {
    variable_list out(4);
    if (at::GradMode::is_enabled()) return composite(g);
    const at::Tensor gr = sum_defined(g[0], 1.0, g[1]);
    const at::Tensor gk = sum_defined(g[0], beta, g[2]);
    const bool gr_one = is_cpu_one(gr);
    const bool gk_one = gk.is_same(gr) ? gr_one : is_cpu_one(gk);
    for (size_t i = 0; i < 4; ++i) {
      const at::Tensor& scale = i < 2 ? gr : gk;
      if (scale.defined() && should_compute_output(i))
        out[i] = grads[i].scaled_by(scale, i < 2 ? gr_one : gk_one);
    }
    return out;
  }

  variable_list composite(const variable_list& g) {
    NoAutocast no_autocast;
    // recon and target reach total and recon; mu and logvar total and kl: an input none of whose
    // outputs got a gradient gets none (not zeros: found by a fuzz, weight decay moved mu)
    const bool reached_rec = g[0].defined() || g[1].defined();
    const bool reached_kl = g[0].defined() || g[2].defined();
    std::vector<bool> mask(4);
    variable_list in(4);
    for (size_t i = 0; i < 4; ++i) {
      mask[i] = should_compute_output(i) && (i < 2 ? reached_rec : reached_kl);
      in[i] = inputs[i].unpack();
    }
    const auto loss = [this](const variable_list& in) {
      return stock_vae_loss(in, recon_loss, beta, scale);
    };
    return composite_grads(loss, in, mask, g);
  }

  // w * a + b over the defined ones of a and b (undefined when neither is).
  static at::Tensor sum_defined(const at::Tensor& a, double w, const at::Tensor& b) {
    if (!a.defined()) return b;
    const at::Tensor wa = w == 1.0 ? a : a * w;
    return b.defined() ? wa + b : wa;
  }

  void release_variables() override {
    for (auto& v : grads) v.release();
    for (auto& v : inputs) v.reset();
  }
};

// reparameterize's backward: edges mu, logvar, eps; d z / d mu = 1, d z / d logvar = h,
// d z / d eps = sd (saved by the forward pass where asked). With create_graph=True, the same
// as differentiable functions of logvar (and a given eps).
struct ReparamBackward : public torch::autograd::Node {
  SavedGrad h, sd;
  KeptInput logvar, eps;  // read only with create_graph=True
  bool drawn = false;     // eps drawn by the kernel (not an input)

  std::string name() const override { return "ReparameterizeBackward"; }

  variable_list apply(variable_list&& grads) override {
    variable_list out(3);
    const at::Tensor& g = grads[0];
    if (!g.defined()) return out;
    if (should_compute_output(0)) out[0] = g;
    if (at::GradMode::is_enabled()) return grads_in_graph(g, std::move(out));
    const bool one = is_cpu_one(g);
    if (should_compute_output(1)) out[1] = h.scaled_by(g, one);
    if (should_compute_output(2)) out[2] = sd.scaled_by(g, one);
    return out;
  }

  // d z / d logvar = eps sd / 2 and d z / d eps = sd, sd = exp(logvar / 2), in float32 (float64
  // for float64). A drawn eps is a constant, known through h = eps sd / 2 alone: h as a function
  // of logvar is h exp(d / 2), d = logvar - logvar.detach() (0, of derivative 1), its value h and
  // its derivative h / 2; d = 0 at an infinite logvar (inf - inf: NaN, found by a fuzz), whose
  // gradient is then h, +-inf, as the first-order one.
  variable_list grads_in_graph(const at::Tensor& g, variable_list out) {
    const at::Tensor lv = accumulated(logvar.unpack()), ga = accumulated(g);
    if (drawn) {
      if (should_compute_output(1)) {
        const at::Tensor hv = accumulated(h.var.unpack());
        const at::Tensor d = at::where(lv.isinf(), at::zeros({}, lv.options()), lv - lv.detach());
        out[1] = (ga * (hv * at::exp(0.5 * d))).to(g.scalar_type());
      }
      return out;
    }
    const at::Tensor s = at::exp(0.5 * lv), e = accumulated(eps.unpack());
    if (should_compute_output(1)) out[1] = differentiable((ga * e * s * 0.5).to(g.scalar_type()));
    if (should_compute_output(2)) out[2] = differentiable((ga * s).to(g.scalar_type()));
    return out;
  }

  void release_variables() override {
    h.release();
    sd.release();
    logvar.reset();
    eps.reset();
  }
};

}  // namespace

at::Tensor reparameterize_eager_cpu(const at::Tensor& mu, const at::Tensor& logvar,
                                    const std::optional<at::Tensor>& eps,
                                    const std::optional<at::Generator>& generator) {
  const bool drawn = !(eps.has_value() && eps->defined());
  const uint64_t key = drawn ? philox_key_cpu(generator) : 0;
  const bool grad =
      at::GradMode::is_enabled() &&
      (mu.requires_grad() || logvar.requires_grad() || (!drawn && eps->requires_grad()));
  const bool need_eps = !drawn && eps->requires_grad();
  at::Tensor z, h, sd;
  {
    at::NoGradGuard no_grad;
    std::tie(z, h, sd) = reparameterize_fused_cpu(mu, logvar, eps, key,
                                                  grad && logvar.requires_grad(), grad && need_eps);
  }
  if (!grad) return z;
  auto node = c10::make_intrusive<ReparamBackward>();
  node->set_next_edges(
      torch::autograd::collect_next_edges(mu, logvar, drawn ? at::Tensor() : *eps));
  node->h.save(h);
  node->sd.save(sd);
  node->drawn = drawn;
  node->logvar = KeptInput(logvar);
  if (!drawn) node->eps = KeptInput(*eps);
  torch::autograd::set_history(z, node);
  return z;
}

at::Tensor gan_loss_autograd_cpu(const at::Tensor& real, const at::Tensor& fake, int64_t real_term,
                                 int64_t fake_term, bool has_real) {
  const bool grad_mode = at::GradMode::is_enabled();  // no gradient is computed without it
  const bool need_r = grad_mode && has_real && real.requires_grad();
  const bool need_f = grad_mode && fake.requires_grad();
  const bool constant =
      constant_slope(fake_term) != 0.0 && (!has_real || constant_slope(real_term) != 0.0);
  at::Tensor loss, gr, gf;
  {
    at::NoGradGuard no_grad;
    std::tie(loss, gr, gf) =
        gan_loss_cpu(has_real ? std::optional<at::Tensor>(real) : std::nullopt, fake, real_term,
                     fake_term, need_r && !constant, need_f && !constant);
  }
  if (!(need_r || need_f)) return loss;
  auto node = c10::make_intrusive<GanLossBackward>();
  node->has_real = has_real;
  node->set_next_edges(has_real ? torch::autograd::collect_next_edges(real, fake)
                                : torch::autograd::collect_next_edges(fake));
  node->constant = constant;
  if (constant) {
    if (has_real) node->mean_real = MeanGrad(constant_slope(real_term), real);
    node->mean_fake = MeanGrad(constant_slope(fake_term), fake);
  } else {
    node->grad_real.save(gr);
    node->grad_fake.save(gf);
    if (has_real) node->real = KeptInput(real);
    node->fake = KeptInput(fake);
  }
  node->real_term = real_term;
  node->fake_term = fake_term;
  torch::autograd::set_history(loss, node);
  return loss;
}

std::vector<at::Tensor> vae_loss_autograd_cpu(const at::Tensor& recon, const at::Tensor& target,
                                              const at::Tensor& mu, const at::Tensor& logvar,
                                              int64_t recon_loss, double beta, double scale) {
  const bool grad_mode = at::GradMode::is_enabled();
  const std::array<bool, 4> mask{grad_mode && recon.requires_grad(),
                                 grad_mode && target.requires_grad(),
                                 grad_mode && mu.requires_grad(),
                                 grad_mode && logvar.requires_grad()};
  at::Tensor total, rec, kl, gx, gt, gm, glv;
  {
    at::NoGradGuard no_grad;
    std::tie(total, rec, kl, gx, gt, gm, glv) =
        vae_loss_cpu(recon, target, mu, logvar, recon_loss, beta, scale, mask);
  }
  std::vector<at::Tensor> outputs{total, rec, kl};
  if (!(mask[0] || mask[1] || mask[2] || mask[3])) return outputs;
  auto node = c10::make_intrusive<VaeLossBackward>();
  node->beta = beta;
  node->scale = scale;
  node->recon_loss = recon_loss;
  node->set_next_edges(torch::autograd::collect_next_edges(recon, target, mu, logvar));
  const std::array<at::Tensor, 4> saved{gx, gt, gm, glv}, in{recon, target, mu, logvar};
  for (size_t i = 0; i < 4; ++i) {
    node->grads[i].save(saved[i]);
    node->inputs[i] = KeptInput(in[i]);
  }
  torch::autograd::set_history(outputs, node);
  return outputs;
}

}  // namespace genkern::cpu
