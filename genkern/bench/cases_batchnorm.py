"""batch_norm + activation (training mode): the BN layers of the DCGAN-64 generator (ReLU) and
discriminator (LeakyReLU 0.2), batch 64.

bytes = the traffic of genkern's fused kernels, the floor of a two-pass (statistics, normalize)
training forward: forward 2 reads + 1 write of x's size; backward one reduction pass (grad_y, the
saved tensor, x) and one elementwise pass (the same three + grad_x): 10 tensor-sizes in all.
"""

from __future__ import annotations

import torch

import genkern
from genkern import reference
from genkern.bench.case import Case


def _bn_case(tag, n, c, hw, act, slope, mode, quick):
    def make_inputs(device, dtype):
        gen = torch.Generator().manual_seed(0)
        grad = mode != "forward"
        x = (torch.randn(n, c, hw, hw, generator=gen) * 2 + 0.5).to(device, dtype)
        w = (torch.rand(c, generator=gen) + 0.5).to(device, dtype)
        b = (torch.randn(c, generator=gen) * 0.1).to(device, dtype)
        rm, rv = (
            torch.zeros(c, device=device, dtype=dtype),
            torch.ones(c, device=device, dtype=dtype),
        )
        return [x.requires_grad_(grad), w.requires_grad_(grad), b.requires_grad_(grad), rm, rv]

    def stock(x, w, b, rm, rv):
        return reference.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5, act, slope)

    def fused(x, w, b, rm, rv, backend):
        return genkern.ops.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5, act, slope, backend=backend)

    size = n * c * hw * hw * 4
    return Case(
        name=f"batch_norm/{tag}",
        family="batch_norm",
        shape=f"{n}x{c}x{hw}x{hw} train {act}",
        mode=mode,
        make_inputs=make_inputs,
        stock=stock,
        genkern=fused,
        bytes=3 * size if mode == "forward" else 10 * size,
        quick=quick,
    )


# (tag, N, C, HW, activation, slope, in --quick)
LAYERS = [
    ("dcgan-G1", 64, 512, 4, "relu", 0.0, False),
    ("dcgan-G2", 64, 256, 8, "relu", 0.0, True),
    ("dcgan-G3", 64, 128, 16, "relu", 0.0, False),
    ("dcgan-G4", 64, 64, 32, "relu", 0.0, True),
    ("dcgan-D2", 64, 128, 16, "leaky_relu", 0.2, True),
    ("dcgan-D3", 64, 256, 8, "leaky_relu", 0.2, False),
    ("dcgan-D4", 64, 512, 4, "leaky_relu", 0.2, False),
]

CASES = [
    _bn_case(tag, *args, mode=mode, quick=quick)
    for (tag, *args, quick) in LAYERS
    for mode in ("forward", "forward+backward")
]
