"""linear + bias + activation: the MNIST VAE's and the CIFAR-10 CNN's dense layers, batch 128."""

from __future__ import annotations

import torch

import genkern
from genkern import reference
from genkern.bench.case import Case


def _case(tag, m, k, n, act, mode, quick):
    def make_inputs(device, dtype):
        gen = torch.Generator().manual_seed(0)
        grad = mode != "forward"
        x = torch.randn(m, k, generator=gen).to(device, dtype).requires_grad_(grad)
        w = (torch.randn(n, k, generator=gen) * k**-0.5).to(device, dtype).requires_grad_(grad)
        b = torch.randn(n, generator=gen).to(device, dtype).requires_grad_(grad)
        return [x, w, b]

    def stock(x, w, b):
        return reference.linear(x, w, b, activation=act)

    def fused(x, w, b, backend):
        return genkern.ops.linear(x, w, b, activation=act, backend=backend)

    fwd = 2.0 * m * n * k
    return Case(
        name=f"linear/{tag}",
        family="linear",
        shape=f"{m}x{k} -> {n} {act}",
        mode=mode,
        make_inputs=make_inputs,
        stock=stock,
        genkern=fused,
        flops=fwd if mode == "forward" else 3 * fwd,
        quick=quick,
    )


# (tag, M, in_features, out_features, activation, in --quick)
LAYERS = [
    ("vae-enc1", 128, 784, 400, "relu", True),
    ("vae-mu", 128, 400, 20, None, False),
    ("vae-dec1", 128, 20, 400, "relu", False),
    ("vae-dec2", 128, 400, 784, "sigmoid", True),
    ("cifar-fc1", 128, 400, 120, "relu", True),
    ("cifar-fc2", 128, 120, 84, "relu", False),
    ("cifar-fc3", 128, 84, 10, None, False),
]

CASES = [
    _case(tag, *args, mode=mode, quick=quick)
    for (tag, *args, quick) in LAYERS
    for mode in ("forward", "forward+backward")
]
