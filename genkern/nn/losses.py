"""genkern.nn.GANLoss and genkern.nn.VAELoss: module forms of the fused losses."""

from __future__ import annotations

import torch

from genkern import ops
from genkern.nn._fused import NotScriptable
from genkern.ops import losses as _L


class GANLoss(NotScriptable, torch.nn.Module):
    """GAN losses of one kind ("bce", "hinge", "wgan", "lsgan").

    .discriminator(real_logits, fake_logits) and .generator(fake_logits); calling the module with
    two tensors is the discriminator loss, with one the generator loss.
    """

    def __init__(self, kind: str = "bce", backend: str = "auto"):
        super().__init__()
        self.kind = _L.check_gan_kind(kind)
        self.backend = backend

    def discriminator(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return ops.discriminator_loss(real_logits, fake_logits, self.kind, self.backend)

    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return ops.generator_loss(fake_logits, self.kind, self.backend)

    def forward(self, logits: torch.Tensor, fake_logits: torch.Tensor | None = None):
        if fake_logits is None:
            return self.generator(logits)
        return self.discriminator(logits, fake_logits)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


class VAELoss(NotScriptable, torch.nn.Module):
    """recon term + beta * KL, as genkern.ops.vae_loss; forward(recon, target, mu, logvar)."""

    def __init__(
        self,
        recon_loss: str = "bce",
        beta: float = 1.0,
        reduction: str = "sum",
        logits: bool = True,
        return_components: bool = False,
        backend: str = "auto",
    ):
        super().__init__()
        _L.check_vae_args(recon_loss, reduction, beta)
        # a tensor beta as given (its gradient, and a schedule changing it in place, reach the
        # loss; found by a fuzz: float() dropped both)
        beta = beta if isinstance(beta, torch.Tensor) else float(beta)
        self.recon_loss, self.beta, self.reduction = recon_loss, beta, reduction
        self.logits, self.return_components, self.backend = logits, return_components, backend

    def forward(self, recon, target, mu, logvar):
        return ops.vae_loss(
            recon,
            target,
            mu,
            logvar,
            self.recon_loss,
            self.beta,
            self.reduction,
            self.logits,
            self.return_components,
            self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"recon_loss={self.recon_loss!r}, beta={self.beta}, reduction={self.reduction!r}, "
            f"logits={self.logits}"
        )
