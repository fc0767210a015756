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

    # the layer whose train/eval mode this one has (a copy made by without_activation)
    mode_of = None

    def without_activation(self):
        """A copy of the layer without its activation: the same parameters, buffers and hooks
        (the dicts holding them are shared), its train/eval mode the layer's (train(), eval()
        or a set of `training` on either reaches the other): what a slice of a converted
        Sequential runs where it cuts the layer's folded activation off."""
        bare = type(self).__new__(type(self))  # (not copy.copy: a parametrized layer, as
        bare.__dict__.update(self.__dict__)  # spectral_norm makes it, refuses pickling's copy)
        bare.activation = None
        bare.__dict__["mode_of"] = self if self.mode_of is None else self.mode_of
        return bare

    @property
    def training(self) -> bool:  # a copy's is its layer's (kept where nn.Module keeps it)
        source = self.__dict__.get("mode_of")
        return self.__dict__.get("training", True) if source is None else source.training

    @training.setter
    def training(self, mode: bool) -> None:  # train(), eval() and a plain set, on either
        self.__dict__["training"] = mode
        source = self.__dict__.get("mode_of")
        if source is not None:
            source.training = mode

    def _unfold_for_hooks(self) -> None:
        """Undoes the fold of the activation this layer carries for a Sequential (see
        genkern.nn.fused_sequential), if any: the place runs the activation from then on."""
        layer = self._mode_source()
        place = layer.__dict__.get("folded_place")
        if place is not None:
            place._unfold_for_hooks()

    def _mode_source(self):
        """The module whose `training` this one runs in (itself but for a copy)."""
        return self if self.mode_of is None else self.mode_of

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
