// Fused GAN and VAE losses on the CPU: loss and gradients in one pass over the inputs.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

namespace genkern::cpu {

// loss = mean(term_r(real)) + mean(term_f(fake)) (no real: the fake term only), a 0-dim float32
// tensor (float64 for float64 inputs), and, when asked, the gradients d loss / d real and
// d loss / d fake in fresh tensors of the inputs' dtype and shape (contiguous).
std::tuple<at::Tensor, at::Tensor, at::Tensor> gan_loss_cpu(const std::optional<at::Tensor>& real,
                                                            const at::Tensor& fake,
                                                            int64_t real_term, int64_t fake_term,
                                                            bool need_grad_real,
                                                            bool need_grad_fake);

// recon = scale * sum l(recon, target), kl = scale * sum kl(mu, logvar), total = recon + beta * kl
// (0-dim tensors), and, per mask entry, scale * dl/drecon, scale * dl/dtarget, scale * dkl/dmu,
// scale * dkl/dlogvar (the KL gradients without beta: the backward weighs them).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
vae_loss_cpu(const at::Tensor& recon, const at::Tensor& target, const at::Tensor& mu,
             const at::Tensor& logvar, int64_t recon_loss, double beta, double scale,
             std::array<bool, 4> mask);

// 64 random bits from `generator` (the default CPU generator when none), under its mutex: the key
// of reparameterize's Philox stream (torch.manual_seed makes it reproducible; each call advances
// the generator, so successive calls draw differently).
uint64_t philox_key_cpu(const std::optional<at::Generator>& generator);

// z = mu + eps * exp(0.5 * logvar), in one pass; eps given, or (none) drawn ~ N(0, 1) inside the
// kernel: Philox4x32-10 keyed by `key`, Box-Muller. When asked, also h = eps * exp(0.5 * logvar)
// / 2 (d z / d logvar) and sd = exp(0.5 * logvar).
std::tuple<at::Tensor, at::Tensor, at::Tensor> reparameterize_fused_cpu(
    const at::Tensor& mu, const at::Tensor& logvar, const std::optional<at::Tensor>& eps,
    uint64_t key, bool need_h, bool need_sd);

// z = mu + eps * exp(0.5 * logvar) and std = exp(0.5 * logvar), in one pass.
std::tuple<at::Tensor, at::Tensor> reparameterize_cpu(const at::Tensor& mu,
                                                      const at::Tensor& logvar,
                                                      const at::Tensor& eps);

}  // namespace genkern::cpu
