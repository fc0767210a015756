// Eager autograd wrappers of the CPU loss kernels (plain autograd Nodes in C++): the eager
// fast path of genkern.ops losses when a gradient is needed. A Python autograd.Function costs tens
// of microseconds a call (forward and backward), as much as the whole loss on 4096 logits; these
// cost a few. Same kernels and backward as the registered custom ops (which torch.compile uses).
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

namespace genkern::cpu {

// loss of gan_loss_cpu, differentiable (gradients computed only in grad mode, for inputs that
// require them); `real` is ignored unless has_real.
at::Tensor gan_loss_autograd_cpu(const at::Tensor& real, const at::Tensor& fake, int64_t real_term,
                                 int64_t fake_term, bool has_real);

// (total, recon, kl) of vae_loss_cpu, differentiable.
std::vector<at::Tensor> vae_loss_autograd_cpu(const at::Tensor& recon, const at::Tensor& target,
                                              const at::Tensor& mu, const at::Tensor& logvar,
                                              int64_t recon_loss, double beta, double scale);

// reparameterize's eager CPU path: z = mu + eps * exp(logvar / 2), differentiable; eps given,
// or (none) drawn inside the kernel from a Philox stream keyed by `generator` (default: torch's
// default CPU generator).
at::Tensor reparameterize_eager_cpu(const at::Tensor& mu, const at::Tensor& logvar,
                                    const std::optional<at::Tensor>& eps,
                                    const std::optional<at::Generator>& generator);

}  // namespace genkern::cpu
