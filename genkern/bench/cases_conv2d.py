"""conv2d + bias + activation: the DCGAN-64 discriminator and MNIST autoencoder encoder layers."""

from __future__ import annotations

import torch

import genkern
from genkern import reference
from genkern.bench.case import Case


def _conv_case(tag, n, c, hw, oc, k, stride, pad, bias, act, slope, mode, quick):
    def make_inputs(device, dtype):
        gen = torch.Generator().manual_seed(0)
        grad = mode != "forward"
        x = torch.randn(n, c, hw, hw, generator=gen).to(device, dtype).requires_grad_(grad)
        w = (torch.randn(oc, c, k, k, generator=gen) * (c * k * k) ** -0.5).to(device, dtype)
        b = torch.randn(oc, generator=gen).to(device, dtype) if bias else None
        return [x, w.requires_grad_(grad), b.requires_grad_(grad) if b is not None else None]

    def stock(x, w, b):
        return reference.conv2d(x, w, b, stride, pad, activation=act, negative_slope=slope)

    def fused(x, w, b, backend):
        return genkern.ops.conv2d(
            x, w, b, stride, pad, activation=act, negative_slope=slope, backend=backend
        )

    ohw = (hw + 2 * pad - k) // stride + 1
    fwd = 2.0 * n * oc * ohw * ohw * c * k * k
    return Case(
        name=f"conv2d/{tag}",
        family="conv2d",
        shape=f"{n}x{c}x{hw}x{hw} -> {oc} k{k} s{stride} p{pad} {act}",
        mode=mode,
        make_inputs=make_inputs,
        stock=stock,
        genkern=fused,
        flops=fwd if mode == "forward" else 3 * fwd,
        quick=quick,
    )


# (tag, N, C, HW, OC, k, stride, pad, bias, activation, slope, in --quick)
LAYERS = [
    ("dcgan-D1", 64, 3, 64, 64, 4, 2, 1, False, "leaky_relu", 0.2, True),
    ("dcgan-D2", 64, 64, 32, 128, 4, 2, 1, False, "leaky_relu", 0.2, False),
    ("dcgan-D3", 64, 128, 16, 256, 4, 2, 1, False, "leaky_relu", 0.2, True),
    ("dcgan-D4", 64, 256, 8, 512, 4, 2, 1, False, "leaky_relu", 0.2, False),
    ("ae-enc1", 256, 1, 28, 32, 3, 1, 1, True, "relu", 0.0, True),
    ("ae-enc2", 256, 32, 14, 64, 3, 1, 1, True, "relu", 0.0, False),
]

CASES = [
    _conv_case(tag, *args, mode=mode, quick=quick)
    for (tag, *args, quick) in LAYERS
    for mode in ("forward", "forward+backward")
]
