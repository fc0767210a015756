#include "losses_autograd.h"

#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>

#include "losses.h"

namespace genkern::cpu {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// saved * g; the saved gradient itself when g is a CPU 1 (loss.backward()) and no graph of the
// backward is built (as genkern/ops/losses.py's _scaled): a pass less.
at::Tensor scaled(const at::Tensor& saved, const at::Tensor& g) {
  TORCH_CHECK(!at::GradMode::is_enabled(),
              "genkern: the second derivative of the fused losses is not implemented "
              "(backward with create_graph=True)");
  if (!saved.defined()) return at::Tensor();
  if (g.device().is_cpu() && !at::GradMode::is_enabled() && g.item<double>() == 1.0) return saved;
  return saved * g;
}

// The GAN loss's backward as a plain autograd Node (not a torch::autograd::Function, whose
// CppNode bookkeeping costs ~10 us a call, as much as the loss of 4096 logits): it scales the
// gradients the forward pass produced. Edges: real's (when given), then fake's.
struct GanLossBackward : public torch::autograd::Node {
  torch::autograd::SavedVariable grad_real, grad_fake;
  bool has_real = false;

  std::string name() const override { return "GanLossBackward"; }

  variable_list apply(variable_list&& grads) override {
    variable_list out(has_real ? 2 : 1);  // undefined: no gradient flows
    if (!grads[0].defined()) return out;
    if (has_real) out[0] = scaled(grad_real.unpack(), grads[0]);
    out.back() = scaled(grad_fake.unpack(), grads[0]);
    return out;
  }

  void release_variables() override {
    grad_real.reset_data();
    grad_fake.reset_data();
  }
};

struct VaeLossFunction : public torch::autograd::Function<VaeLossFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& recon,
                               const at::Tensor& target, const at::Tensor& mu,
                               const at::Tensor& logvar, int64_t recon_loss, double beta,
                               double scale) {
    const std::array<bool, 4> mask{recon.requires_grad(), target.requires_grad(),
                                   mu.requires_grad(), logvar.requires_grad()};
    auto [total, rec, kl, gx, gt, gm, glv] =
        vae_loss_cpu(recon, target, mu, logvar, recon_loss, beta, scale, mask);
    ctx->save_for_backward({gx, gt, gm, glv});
    ctx->saved_data["beta"] = beta;
    return {total, rec, kl};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const double beta = ctx->saved_data["beta"].toDouble();
    const at::Tensor gr = grads[0] + grads[1];
    const at::Tensor gk = grads[0] * beta + grads[2];
    return {scaled(saved[0], gr), scaled(saved[1], gr), scaled(saved[2], gk),
            scaled(saved[3], gk), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

struct ReparamFunction : public torch::autograd::Function<ReparamFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& mu, const at::Tensor& logvar,
                            const std::optional<at::Tensor>& eps, uint64_t key) {
    const bool need_eps = eps.has_value() && eps->defined() && eps->requires_grad();
    auto [z, h, sd] = reparameterize_fused_cpu(mu, logvar, eps, key, logvar.requires_grad(),
                                               need_eps);
    ctx->save_for_backward({h, sd});
    return z;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "genkern: the second derivative of reparameterize's eager CPU path is not "
                "implemented (backward with create_graph=True); pass backend=\"torch\"");
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& g = grads[0];
    return {g, saved[0].defined() ? g * saved[0] : at::Tensor(),
            saved[1].defined() ? g * saved[1] : at::Tensor(), at::Tensor()};
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
  if (!grad) return std::get<0>(reparameterize_fused_cpu(mu, logvar, eps, key, false, false));
  return ReparamFunction::apply(mu, logvar, eps, key);
}

at::Tensor gan_loss_autograd_cpu(const at::Tensor& real, const at::Tensor& fake, int64_t real_term,
                                 int64_t fake_term, bool has_real) {
  const bool grad_mode = at::GradMode::is_enabled();  // no gradient is computed without it
  const bool need_r = grad_mode && has_real && real.requires_grad();
  const bool need_f = grad_mode && fake.requires_grad();
  at::Tensor loss, gr, gf;
  {
    at::NoGradGuard no_grad;
    std::tie(loss, gr, gf) =
        gan_loss_cpu(has_real ? std::optional<at::Tensor>(real) : std::nullopt, fake, real_term,
                     fake_term, need_r, need_f);
  }
  if (!(need_r || need_f)) return loss;
  auto node = c10::make_intrusive<GanLossBackward>();
  node->has_real = has_real;
  node->set_next_edges(has_real ? torch::autograd::collect_next_edges(real, fake)
                                : torch::autograd::collect_next_edges(fake));
  node->grad_real = torch::autograd::SavedVariable(gr, false);
  node->grad_fake = torch::autograd::SavedVariable(gf, false);
  torch::autograd::set_history(loss, node);
  return loss;
}

std::vector<at::Tensor> vae_loss_autograd_cpu(const at::Tensor& recon, const at::Tensor& target,
                                              const at::Tensor& mu, const at::Tensor& logvar,
                                              int64_t recon_loss, double beta, double scale) {
  return VaeLossFunction::apply(recon, target, mu, logvar, recon_loss, beta, scale);
}

}  // namespace genkern::cpu
