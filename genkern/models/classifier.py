"""CIFAR-10 CNN classifier: three conv + ReLU + max-pool blocks (32 -> 16 -> 8 -> 4), two linear
layers, 10 logits."""

from __future__ import annotations

import torch
from torch import nn

from genkern.models._build import finish


class CNNClassifier(nn.Module):
    def __init__(self, num_classes: int = 10, channels: int = 3, impl: str = "genkern"):
        super().__init__()
        blocks = []
        width_in = channels
        for width in (32, 64, 128):
            blocks += [nn.Conv2d(width_in, width, 3, padding=1), nn.ReLU(True), nn.MaxPool2d(2)]
            width_in = width
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(128 * 4 * 4, 256), nn.ReLU(True), nn.Linear(256, num_classes)
        )
        finish(self, impl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
