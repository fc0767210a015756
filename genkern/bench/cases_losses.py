"""GAN and VAE losses: D and G losses on DCGAN (64), PatchGAN-like (64x1x8x8) and 1M logits; the
VAE loss on MNIST-sized (128x1x28x28) and CelebA-64-sized (128x3x64x64) batches, latent 128.

Stock is the composite users write: F.binary_cross_entropy_with_logits against ones/zeros
targets, and the KL formula.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import genkern
from genkern.bench.case import Case


def _stock_d(real, fake):
    return F.binary_cross_entropy_with_logits(
        real, torch.ones_like(real)
    ) + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))


def _stock_g(fake):
    return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))


def _stock_vae(recon, target, mu, logvar):
    rec = F.binary_cross_entropy_with_logits(recon, target, reduction="sum")
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return rec + kl


def _gan_case(which, tag, shape, mode, quick):
    n = 1
    for s in shape:
        n *= s

    def make_inputs(device, dtype):
        gen = torch.Generator().manual_seed(0)
        grad = mode != "forward"
        ts = [
            (torch.randn(shape, generator=gen) * 2).to(device, dtype).requires_grad_(grad)
            for _ in range(2 if which == "D" else 1)
        ]
        return ts

    if which == "D":
        stock = _stock_d
        fused = lambda r, f, backend: genkern.ops.discriminator_loss(r, f, "bce", backend=backend)
    else:
        stock = _stock_g
        fused = lambda f, backend: genkern.ops.generator_loss(f, "bce", backend=backend)
    tensors = 2 if which == "D" else 1
    # forward reads each logit once; forward+backward also writes its gradient (fp32 bytes)
    moved = 4.0 * n * tensors * (1 if mode == "forward" else 2)
    return Case(
        name=f"losses/{which}-bce-{tag}",
        family="losses",
        shape=f"{tensors} x {'x'.join(map(str, shape))} logits",
        mode=mode,
        make_inputs=make_inputs,
        stock=stock,
        genkern=fused,
        bytes=moved,
        quick=quick,
    )


def _vae_case(tag, shape, latent, mode, quick):
    n = 1
    for s in shape:
        n *= s
    k = shape[0] * latent

    def make_inputs(device, dtype):
        gen = torch.Generator().manual_seed(0)
        grad = mode != "forward"
        recon = torch.randn(shape, generator=gen).to(device, dtype).requires_grad_(grad)
        target = torch.rand(shape, generator=gen).to(device, dtype)
        mu = torch.randn(shape[0], latent, generator=gen).to(device, dtype).requires_grad_(grad)
        lv = (torch.randn(shape[0], latent, generator=gen) * 0.5).to(device, dtype)
        return [recon, target, mu, lv.requires_grad_(grad)]

    def fused(recon, target, mu, logvar, backend):
        return genkern.ops.vae_loss(recon, target, mu, logvar, backend=backend)

    # forward reads recon, target, mu, logvar; backward writes grads of recon, mu, logvar
    moved = 4.0 * (2 * n + 2 * k) + (0 if mode == "forward" else 4.0 * (n + 2 * k))
    return Case(
        name=f"losses/vae-{tag}",
        family="losses",
        shape=f"{'x'.join(map(str, shape))} latent {latent}",
        mode=mode,
        make_inputs=make_inputs,
        stock=_stock_vae,
        genkern=fused,
        bytes=moved,
        quick=quick,
    )


def _reparam_case(batch, latent, mode):
    def make_inputs(device, dtype):
        gen = torch.Generator().manual_seed(0)
        grad = mode != "forward"
        mu = torch.randn(batch, latent, generator=gen).to(device, dtype).requires_grad_(grad)
        lv = (torch.randn(batch, latent, generator=gen) * 0.5).to(device, dtype)
        eps = torch.randn(batch, latent, generator=gen).to(device, dtype)
        return [mu, lv.requires_grad_(grad), eps]

    def stock(mu, logvar, eps):
        return mu + eps * torch.exp(0.5 * logvar)

    def fused(mu, logvar, eps, backend):
        return genkern.ops.reparameterize(mu, logvar, eps=eps, backend=backend)

    k = 4.0 * batch * latent  # bytes of one tensor (fp32)
    return Case(
        name=f"losses/reparameterize-{batch}x{latent}",
        family="losses",
        shape=f"{batch}x{latent}",
        mode=mode,
        make_inputs=make_inputs,
        stock=stock,
        genkern=fused,
        bytes=4 * k if mode == "forward" else 9 * k,  # + read grad, eps, std; write 2 grads
    )


# (which, tag, shape, in --quick for forward+backward)
GAN_SHAPES = [
    ("D", "64", (64, 1), False),
    ("D", "4096", (64, 1, 8, 8), True),
    ("D", "1M", (1024, 1, 32, 32), True),
    ("G", "64", (64, 1), False),
    ("G", "4096", (64, 1, 8, 8), False),
    ("G", "1M", (1024, 1, 32, 32), True),
]
VAE_SHAPES = [("mnist", (128, 1, 28, 28), 128, True), ("celeba64", (128, 3, 64, 64), 128, False)]

CASES = [
    *[
        _gan_case(w, tag, shape, mode, quick and mode == "forward+backward")
        for (w, tag, shape, quick) in GAN_SHAPES
        for mode in ("forward", "forward+backward")
    ],
    *[
        _vae_case(tag, shape, latent, mode, quick and mode == "forward+backward")
        for (tag, shape, latent, quick) in VAE_SHAPES
        for mode in ("forward", "forward+backward")
    ],
    *[_reparam_case(128, 128, mode) for mode in ("forward", "forward+backward")],
]
