"""Convolutional VAE (Kingma & Welling) for 28x28 images: conv encoder to (mu, logvar), the
reparameterization, transposed-conv decoder to reconstruction logits."""

from __future__ import annotations

import torch
from torch import nn

from genkern.models._build import check_impl, finish


class ConvVAE(nn.Module):
    def __init__(
        self, latent_dim: int = 20, image_size: int = 28, channels: int = 1, impl: str = "genkern"
    ):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4, but got {image_size}")
        side = image_size // 4
        self.impl = check_impl(impl)
        self.latent_dim = latent_dim
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, 32, 4, 2, 1),
            nn.ReLU(True),
            nn.Conv2d(32, 64, 4, 2, 1),
            nn.ReLU(True),
            nn.Flatten(),
            nn.Linear(64 * side * side, 256),
            nn.ReLU(True),
        )
        self.fc_mu = nn.Linear(256, latent_dim)
        self.fc_logvar = nn.Linear(256, latent_dim)
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, 256),
            nn.ReLU(True),
            nn.Linear(256, 64 * side * side),
            nn.ReLU(True),
            nn.Unflatten(1, (64, side, side)),
            nn.ConvTranspose2d(64, 32, 4, 2, 1),
            nn.ReLU(True),
            nn.ConvTranspose2d(32, channels, 4, 2, 1),  # logits: the loss takes them
        )
        finish(self, impl)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.fc_mu(h), self.fc_logvar(h)

    def reparameterize(self, mu, logvar, eps=None):
        if eps is None:
            eps = torch.randn_like(mu)
        if self.impl == "genkern":
            from genkern import ops

            return ops.reparameterize(mu, logvar, eps=eps)
        return mu + eps * torch.exp(0.5 * logvar)

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None):
        """(reconstruction logits, mu, logvar)."""
        mu, logvar = self.encode(x)
        return self.decoder(self.reparameterize(mu, logvar, eps)), mu, logvar
