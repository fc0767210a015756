// Fused GAN and VAE losses on CUDA: the torch glue (same contract as csrc/cpu/losses.h).
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <tuple>

namespace genkern::cuda {

std::tuple<at::Tensor, at::Tensor, at::Tensor> gan_loss_cuda(const std::optional<at::Tensor>& real,
                                                             const at::Tensor& fake,
                                                             int64_t real_term, int64_t fake_term,
                                                             bool need_grad_real,
                                                             bool need_grad_fake);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
vae_loss_cuda(const at::Tensor& recon, const at::Tensor& target, const at::Tensor& mu,
              const at::Tensor& logvar, int64_t recon_loss, double beta, double scale,
              std::array<bool, 4> mask);

std::tuple<at::Tensor, at::Tensor> reparameterize_cuda(const at::Tensor& mu,
                                                       const at::Tensor& logvar,
                                                       const at::Tensor& eps);

}  // namespace genkern::cuda
