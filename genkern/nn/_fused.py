"""The activation attributes shared by every drop-in module with a fused activation."""

from __future__ import annotations

from genkern import activations as A


class FusedActivationMixin:
    """Stores `activation` and `negative_slope`, validated once at construction."""

    def _init_activation(self, activation: str | None, negative_slope: float) -> None:
        A.activation_id(activation)
        self.activation = activation
        self.negative_slope = A.check_negative_slope(negative_slope)

    def _activation_repr(self) -> str:
        if self.activation is None:
            return ""
        if self.activation == "leaky_relu":
            return f", activation='leaky_relu', negative_slope={self.negative_slope}"
        return f", activation={self.activation!r}"
