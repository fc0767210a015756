"""conv_transpose2d + bias + activation: the DCGAN-64 generator and MNIST autoencoder decoder."""

from __future__ import annotations

import torch

import genkern
from genkern import reference
from genkern.bench.case import Case


def _case(tag, n, c, hw, oc, k, stride, pad, bias, act, mode, quick):
    def make_inputs(device, dtype):
        gen = torch.Generator().manual_seed(0)
        grad = mode != "forward"
        x = torch.randn(n, c, hw, hw, generator=gen).to(device, dtype).requires_grad_(grad)
        w = (torch.randn(c, oc, k, k, generator=gen) * (c * k * k) ** -0.5).to(device, dtype)
        b = torch.randn(oc, generator=gen).to(device, dtype) if bias else None
        return [x, w.requires_grad_(grad), b.requires_grad_(grad) if b is not None else None]

    def stock(x, w, b):
        return reference.conv_transpose2d(x, w, b, stride, pad, activation=act)

    def fused(x, w, b, backend):
        return genkern.ops.conv_transpose2d(x, w, b, stride, pad, activation=act, backend=backend)

    ohw = (hw - 1) * stride - 2 * pad + k
    fwd = 2.0 * n * c * hw * hw * oc * k * k
    return Case(
        name=f"conv_transpose2d/{tag}",
        family="conv_transpose2d",
        shape=f"{n}x{c}x{hw}x{hw} -> {oc}x{ohw}x{ohw} k{k} s{stride} p{pad} {act}",
        mode=mode,
        make_inputs=make_inputs,
        stock=stock,
        genkern=fused,
        flops=fwd if mode == "forward" else 3 * fwd,
        quick=quick,
    )


# (tag, N, C_in, HW, C_out, k, stride, pad, bias, activation, in --quick)
LAYERS = [
    ("dcgan-G1", 64, 100, 1, 512, 4, 1, 0, False, "relu", False),
    ("dcgan-G2", 64, 512, 4, 256, 4, 2, 1, False, "relu", False),
    ("dcgan-G3", 64, 256, 8, 128, 4, 2, 1, False, "relu", False),
    ("dcgan-G4", 64, 128, 16, 64, 4, 2, 1, False, "relu", False),
    ("dcgan-G5", 64, 64, 32, 3, 4, 2, 1, False, "tanh", True),
    ("ae-dec1", 256, 64, 7, 32, 4, 2, 1, True, "relu", True),
    ("ae-dec2", 256, 32, 14, 1, 4, 2, 1, True, "sigmoid", False),
]

CASES = [
    _case(tag, *args, mode=mode, quick=quick)
    for (tag, *args, quick) in LAYERS
    for mode in ("forward", "forward+backward")
]
