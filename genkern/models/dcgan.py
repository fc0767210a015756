"""DCGAN generator and discriminator (Radford et al.): transposed conv + BN + ReLU with a tanh
out; conv + BN + LeakyReLU(0.2) with a logit out. 64x64 or 32x32 images."""

from __future__ import annotations

import torch
from torch import nn

from genkern.models._build import finish


def _depth(image_size: int) -> int:
    if image_size not in (32, 64):
        raise ValueError(f"image_size must be 32 or 64, but got {image_size}")
    return 3 if image_size == 32 else 4  # stride-2 stages after the 4x4 stage


class DCGANGenerator(nn.Module):
    def __init__(
        self, nz: int = 100, ngf: int = 64, nc: int = 3, image_size: int = 64, impl: str = "genkern"
    ):
        super().__init__()
        stages = _depth(image_size)
        width = ngf * 2 ** (stages - 1)
        layers = [
            nn.ConvTranspose2d(nz, width, 4, 1, 0, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(True),
        ]
        for _ in range(stages - 1):
            layers += [
                nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width // 2),
                nn.ReLU(True),
            ]
            width //= 2
        layers += [nn.ConvTranspose2d(width, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.nz = nz
        self.main = nn.Sequential(*layers)
        finish(self, impl)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z.view(z.shape[0], self.nz, 1, 1))


class DCGANDiscriminator(nn.Module):
    def __init__(self, ndf: int = 64, nc: int = 3, image_size: int = 64, impl: str = "genkern"):
        super().__init__()
        stages = _depth(image_size)
        layers = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        width = ndf
        for _ in range(stages - 1):
            layers += [
                nn.Conv2d(width, width * 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width * 2),
                nn.LeakyReLU(0.2, True),
            ]
            width *= 2
        layers += [nn.Conv2d(width, 1, 4, 1, 0, bias=False)]
        self.main = nn.Sequential(*layers)
        finish(self, impl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).flatten()  # one logit per image
