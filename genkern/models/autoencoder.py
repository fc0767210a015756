"""MNIST autoencoder: conv + max-pool encoder (28 -> 14 -> 7), transposed-conv decoder, sigmoid."""

from __future__ import annotations

import torch
from torch import nn

from genkern.models._build import finish


class AutoEncoder(nn.Module):
    def __init__(self, channels: int = 1, impl: str = "genkern"):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1),
            nn.ReLU(True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(True),
            nn.MaxPool2d(2),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(64, 32, 4, 2, 1),
            nn.ReLU(True),
            nn.ConvTranspose2d(32, channels, 4, 2, 1),
            nn.Sigmoid(),
        )
        finish(self, impl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))
