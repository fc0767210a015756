"""What genkern's modules share: a clear refusal of torch.jit.script, and the activation
attributes of every drop-in with a fused activation."""

from __future__ import annotations

from torch import nn

from genkern import activations as A


def activation_module(name: str, negative_slope: float):
    """The torch.nn module of a fused activation's name (genkern.activations)."""
    if name == "leaky_relu":
        return nn.LeakyReLU(negative_slope)
    return {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "silu": nn.SiLU}[name]()


class NotScriptable:
    """torch.jit.script calls __prepare_scriptable__ on each module before compiling it: genkern's
    forwards (Python checks, then genkern's ops) are not TorchScript, and the compiler's own error
    points at a line of them."""

    def __prepare_scriptable__(self):
        raise RuntimeError(
            f"genkern.nn.{type(self).__name__} cannot be compiled by torch.jit.script; use "
            "torch.jit.trace, torch.export or torch.compile, which run genkern's ops"
        )


class UnfoldsWhenHooked:
    """Registering a hook on a folded pair's carrier or on its activation's place first undoes
    that fold (_unfold_for_hooks): the hook then sees what it would on stock's layers (the
    layer's own output, the activation's input), as convert leaves pairs that hooks watched
    unfused (found by a fuzz: guided backprop's hooks on ReLUs, dead-ReLU statistics)."""

    def _unfold_for_hooks(self) -> None:
        raise NotImplementedError

    def register_forward_pre_hook(self, *args, **kwargs):
        self._unfold_for_hooks()
        return super().register_forward_pre_hook(*args, **kwargs)

    def register_forward_hook(self, *args, **kwargs):
        self._unfold_for_hooks()
        return super().register_forward_hook(*args, **kwargs)

    def register_full_backward_pre_hook(self, *args, **kwargs):
        self._unfold_for_hooks()
        return super().register_full_backward_pre_hook(*args, **kwargs)

    def register_full_backward_hook(self, *args, **kwargs):
        self._unfold_for_hooks()
        return super().register_full_backward_hook(*args, **kwargs)

    def register_backward_hook(self, *args, **kwargs):
        self._unfold_for_hooks()
        return super().register_backward_hook(*args, **kwargs)


class FusedActivationMixin(UnfoldsWhenHooked, NotScriptable):
    """Stores `activation` and `negative_slope`, validated once at construction."""

    def _unfold_for_hooks(self) -> None:
        """Undoes the fold of the activation this layer carries for a Sequential (see
        genkern.nn.fused_sequential), if any: the place runs the activation from then on."""
        place = self.__dict__.get("folded_place")
        if place is not None:
            place._unfold_for_hooks()

    def _call_activation(self, folded: bool) -> str | None:
        """The activation this call runs: the layer's own, or one convert folded into it, which
        runs only where its Sequential (or a traced model's pair) calls the layer (folded=True).
        Called by itself, as a loop over a Sequential's layers calls it (a perceptual loss
        reading each layer's output), the layer runs alone, as stock's, and the activation's
        place runs the activation (found by a fuzz: a VGG loop read relu1_2 before its ReLU)."""
        if folded:
            return self.activation
        place = self.__dict__.get("folded_place")
        return None if place is not None and place.carrier is self else self.activation

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
