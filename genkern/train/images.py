"""Sample grids as PNG: a tiny make_grid of our own, written with Pillow."""

from __future__ import annotations

import math
import os

import torch


def make_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 1.0):
    """N x C x H x W images with values in [0, 1] -> one C x H' x W' tensor, nrow images a row."""
    if images.dim() != 4:
        raise ValueError(
            f"make_grid expects N x C x H x W images, but got shape {tuple(images.shape)}"
        )
    n, c, h, w = images.shape
    nrow = max(1, min(nrow, n))
    rows = math.ceil(n / nrow)
    grid = images.new_full(
        (c, rows * (h + padding) + padding, nrow * (w + padding) + padding), pad_value
    )
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = images[i]
    return grid


def save_image(grid: torch.Tensor, path: str) -> str:
    """Writes a C x H x W tensor in [0, 1] (C = 1 or 3) as a PNG, atomically."""
    from PIL import Image

    array = grid.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
    if array.shape[0] == 1:
        image = Image.fromarray(array[0].numpy(), mode="L")
    else:
        image = Image.fromarray(array.permute(1, 2, 0).contiguous().numpy(), mode="RGB")
    tmp = f"{path}.tmp"
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def save_grid(images: torch.Tensor, path: str, nrow: int = 8) -> str:
    return save_image(make_grid(images, nrow=nrow), path)
