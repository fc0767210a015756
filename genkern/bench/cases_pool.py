"""2x2 pooling (and the decoder's nearest upsampling) of the MNIST autoencoder (batch 256,
28x28 / 14x14) and the CIFAR CNN (batch 128, 32 / 16 / 8), max pool with indices in training;
and the conv blocks' ReLU + max pool as users write it (stock: max_pool2d(relu(x))) against
genkern's max pool with the ReLU on its output (what genkern.nn.convert makes of the block).

bytes = the floor of one pass: read x, write y (forward); backward adds read grad_y (and the int64
indices of max pool, saved by the forward and by stock alike) and write grad_x.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import genkern
from genkern.bench.case import Case


def _pool_case(tag, kind, n, c, hw, mode, quick, relu=False):
    def make_inputs(device, dtype):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(n, c, hw, hw, generator=gen).to(device, dtype)
        return [x.requires_grad_(mode != "forward")]

    if kind == "max" and relu:
        stock = lambda x: F.max_pool2d(F.relu(x), 2)  # noqa: E731
        fused = lambda x, backend: genkern.ops.max_pool2d(  # noqa: E731
            x, 2, activation="relu", backend=backend
        )
        out = n * c * (hw // 2) ** 2
    elif kind == "max":
        stock = lambda x: F.max_pool2d(x, 2)  # noqa: E731
        fused = lambda x, backend: genkern.ops.max_pool2d(x, 2, backend=backend)  # noqa: E731
        out = n * c * (hw // 2) ** 2
    elif kind == "avg":
        stock = lambda x: F.avg_pool2d(x, 2)  # noqa: E731
        fused = lambda x, backend: genkern.ops.avg_pool2d(x, 2, backend=backend)  # noqa: E731
        out = n * c * (hw // 2) ** 2
    else:  # nearest upsampling x2
        stock = lambda x: F.interpolate(x, scale_factor=2, mode="nearest")  # noqa: E731
        fused = lambda x, backend: genkern.ops.upsample_nearest2d(x, 2, backend=backend)  # noqa: E731
        out = n * c * (hw * 2) ** 2
    inp = n * c * hw * hw
    fwd = 4 * (inp + out)
    bwd = 4 * (out + inp) + (8 * out if kind == "max" else 0)
    return Case(
        name=f"{kind}_pool2d/{tag}" if kind != "up" else f"upsample_nearest2d/{tag}",
        family="pool",
        shape=f"{n}x{c}x{hw}x{hw} {'2x2' if kind != 'up' else 'x2'}" + (" relu" if relu else ""),
        mode=mode,
        make_inputs=make_inputs,
        stock=stock,
        genkern=fused,
        bytes=fwd if mode == "forward" else fwd + bwd,
        quick=quick,
    )


# (tag, kind, N, C, HW, in --quick)
LAYERS = [
    ("ae-enc1", "max", 256, 32, 28, True),
    ("ae-enc2", "max", 256, 64, 14, False),
    ("ae-dec1", "up", 256, 64, 7, False),
    ("ae-dec2", "up", 256, 32, 14, False),
    ("cifar-1", "max", 128, 32, 32, True),
    ("cifar-2", "max", 128, 64, 16, False),
    ("cifar-3", "max", 128, 128, 8, False),
    ("cifar-avg", "avg", 128, 64, 16, False),
]

# (tag, N, C, HW): ReLU + max pool blocks
RELU_LAYERS = [("ae-enc1-relu", 256, 32, 28), ("cifar-1-relu", 128, 32, 32)]

CASES = [
    _pool_case(tag, *args, mode=mode, quick=quick)
    for (tag, *args, quick) in LAYERS
    for mode in ("forward", "forward+backward")
] + [
    _pool_case(tag, "max", n, c, hw, mode=mode, quick=False, relu=True)
    for (tag, n, c, hw) in RELU_LAYERS
    for mode in ("forward", "forward+backward")
]
