"""genkern.nn.Conv2d: torch.nn.Conv2d with a fused activation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genkern import ops
from genkern.nn._fused import FusedActivationMixin


class Conv2d(FusedActivationMixin, torch.nn.Conv2d):
    """torch.nn.Conv2d + a fused activation; same arguments, parameters and state_dict keys.

    Extra arguments: `activation` (None, "relu", "leaky_relu", "tanh", "sigmoid", "silu"),
    `negative_slope` (for "leaky_relu"), `backend` (default "auto").
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias=True,
        padding_mode="zeros",
        device=None,
        dtype=None,
        *,
        activation: str | None = None,
        negative_slope: float = 0.01,
        backend: str = "auto",
    ):
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device,
            dtype,
        )
        self._init_activation(activation, negative_slope)
        self.backend = backend

    def forward(self, input: torch.Tensor, *, _folded: bool = False) -> torch.Tensor:
        padding = self.padding
        if self.padding_mode != "zeros":  # torch pads explicitly for the other modes
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        return ops.conv2d(
            input,
            self.weight,
            self.bias,
            self.stride,
            padding,
            self.dilation,
            self.groups,
            self._call_activation(_folded),
            self.negative_slope,
            self.backend,
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + self._activation_repr()


class ConvTranspose2d(FusedActivationMixin, torch.nn.ConvTranspose2d):
    """torch.nn.ConvTranspose2d + a fused activation; same arguments, parameters and state_dict
    keys, and forward(input, output_size=None) as torch's.

    Extra arguments: `activation` (None, "relu", "leaky_relu", "tanh", "sigmoid", "silu"),
    `negative_slope` (for "leaky_relu"), `backend` (default "auto").
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        output_padding=0,
        groups=1,
        bias=True,
        dilation=1,
        padding_mode="zeros",
        device=None,
        dtype=None,
        *,
        activation: str | None = None,
        negative_slope: float = 0.01,
        backend: str = "auto",
    ):
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            output_padding,
            groups,
            bias,
            dilation,
            padding_mode,
            device,
            dtype,
        )
        self._init_activation(activation, negative_slope)
        self.backend = backend

    def forward(
        self, input: torch.Tensor, output_size: list[int] | None = None, *, _folded: bool = False
    ) -> torch.Tensor:
        if self.padding_mode != "zeros":  # as torch (construction already rejects it)
            raise ValueError("Only `zeros` padding mode is supported for ConvTranspose2d")
        output_padding = self._output_padding(
            input, output_size, self.stride, self.padding, self.kernel_size, 2, self.dilation
        )
        return ops.conv_transpose2d(
            input,
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            output_padding,
            self.groups,
            self.dilation,
            self._call_activation(_folded),
            self.negative_slope,
            self.backend,
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + self._activation_repr()
