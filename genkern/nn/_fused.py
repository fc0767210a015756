"""What genkern's modules share: a clear refusal of torch.jit.script, and the activation
attributes of every drop-in with a fused activation."""

from __future__ import annotations

from genkern import activations as A


class NotScriptable:
    """torch.jit.script calls __prepare_scriptable__ on each module before compiling it: genkern's
    forwards (Python checks, then genkern's ops) are not TorchScript, and the compiler's own error
    points at a line of them."""

    def __prepare_scriptable__(self):
        raise RuntimeError(
            f"genkern.nn.{type(self).__name__} cannot be compiled by torch.jit.script; use "
            "torch.jit.trace, torch.export or torch.compile, which run genkern's ops"
        )


class FusedActivationMixin(NotScriptable):
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
