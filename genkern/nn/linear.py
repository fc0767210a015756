"""genkern.nn.Linear: torch.nn.Linear with a fused activation."""

from __future__ import annotations

import torch

from genkern import ops
from genkern.nn._fused import FusedActivationMixin


class Linear(FusedActivationMixin, torch.nn.Linear):
    """torch.nn.Linear + a fused activation; same arguments, parameters and state_dict keys.

    Extra arguments: `activation` (None, "relu", "leaky_relu", "tanh", "sigmoid", "silu"),
    `negative_slope` (for "leaky_relu"), `backend` (default "auto").
    """

    def __init__(
        self,
        in_features,
        out_features,
        bias=True,
        device=None,
        dtype=None,
        *,
        activation: str | None = None,
        negative_slope: float = 0.01,
        backend: str = "auto",
    ):
        super().__init__(in_features, out_features, bias, device, dtype)
        self._init_activation(activation, negative_slope)
        self.backend = backend

    def forward(self, input: torch.Tensor, *, _folded: bool = False) -> torch.Tensor:
        return ops.linear(
            input,
            self.weight,
            self.bias,
            self._call_activation(_folded),
            self.negative_slope,
            self.backend,
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + self._activation_repr()
