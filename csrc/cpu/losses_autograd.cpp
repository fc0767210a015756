#include "losses_autograd.h"

#include <torch/csrc/autograd/custom_function.h>

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

struct GanLossFunction : public torch::autograd::Function<GanLossFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& real, const at::Tensor& fake,
                            int64_t real_term, int64_t fake_term, bool has_real) {
    const bool need_r = has_real && real.requires_grad();
    const bool need_f = fake.requires_grad();
    auto [loss, gr, gf] =
        gan_loss_cpu(has_real ? std::optional<at::Tensor>(real) : std::nullopt, fake, real_term,
                     fake_term, need_r, need_f);
    ctx->save_for_backward({gr, gf});
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    return {scaled(saved[0], grads[0]), scaled(saved[1], grads[0]), at::Tensor(), at::Tensor(),
            at::Tensor()};
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
  return GanLossFunction::apply(real, fake, real_term, fake_term, has_real);
}

std::vector<at::Tensor> vae_loss_autograd_cpu(const at::Tensor& recon, const at::Tensor& target,
                                              const at::Tensor& mu, const at::Tensor& logvar,
                                              int64_t recon_loss, double beta, double scale) {
  return VaeLossFunction::apply(recon, target, mu, logvar, recon_loss, beta, scale);
}

}  // namespace genkern::cpu
