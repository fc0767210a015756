"""genkern.nn.MaxPool2d, AvgPool2d and Upsample (nearest): drop-in torch.nn subclasses."""

from __future__ import annotations

import torch

from genkern import ops
from genkern.nn._fused import FusedActivationMixin, NotScriptable


class MaxPool2d(FusedActivationMixin, torch.nn.MaxPool2d):
    """torch.nn.MaxPool2d on genkern.ops.max_pool2d; extra arguments `activation` and
    `negative_slope` (applied to the pooled output, as genkern.nn.Conv2d's) and `backend`."""

    def __init__(
        self,
        kernel_size,
        stride=None,
        padding=0,
        dilation=1,
        return_indices=False,
        ceil_mode=False,
        *,
        activation: str | None = None,
        negative_slope: float = 0.01,
        backend: str = "auto",
    ):
        super().__init__(kernel_size, stride, padding, dilation, return_indices, ceil_mode)
        self._init_activation(activation, negative_slope)
        self.backend = backend

    def forward(self, input: torch.Tensor, *, _folded: bool = False):
        return ops.max_pool2d(
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.ceil_mode,
            self.return_indices,
            self._call_activation(_folded),
            self.negative_slope,
            self.backend,
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + self._activation_repr()


class AvgPool2d(NotScriptable, torch.nn.AvgPool2d):
    """torch.nn.AvgPool2d on genkern.ops.avg_pool2d; extra argument `backend`."""

    def __init__(
        self,
        kernel_size,
        stride=None,
        padding=0,
        ceil_mode=False,
        count_include_pad=True,
        divisor_override=None,
        *,
        backend: str = "auto",
    ):
        super().__init__(
            kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
        )
        self.backend = backend

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return ops.avg_pool2d(
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
            self.backend,
        )


class Upsample(NotScriptable, torch.nn.Upsample):
    """torch.nn.Upsample for mode="nearest": 4-D input on genkern.ops.upsample_nearest2d, other
    ranks on torch's."""

    def __init__(
        self,
        size=None,
        scale_factor=None,
        mode="nearest",
        align_corners=None,
        recompute_scale_factor=None,
        *,
        backend: str = "auto",
    ):
        if mode != "nearest":
            raise ValueError(f"genkern.nn.Upsample supports mode='nearest' only, got {mode!r}")
        if recompute_scale_factor:
            raise ValueError("genkern.nn.Upsample does not support recompute_scale_factor=True")
        super().__init__(size, scale_factor, mode, align_corners, recompute_scale_factor)
        self.backend = backend

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.dim() != 4:  # torch's 3-D and 5-D nearest upsampling, as the layer it replaces
            return super().forward(input)
        return ops.upsample_nearest2d(input, self.scale_factor, self.size, self.backend)
