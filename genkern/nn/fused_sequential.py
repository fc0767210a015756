"""The nn.Sequential that genkern.nn.convert makes of one whose activations it moved.

convert folds an activation module into the layer before it (or moves a ReLU on onto the max
pool after it: its carrier) and leaves a FoldedActivation in its place. Running the Sequential
whole is what it was. A slice of it (VGG perceptual losses take `features[:k]`, often before an
activation) computes what the stock slice did: where the slice does not hold the whole run of
children from a carrier to its activation's place in their order, the carrier runs without the
activation and the place runs the activation module. Editing the Sequential (setting, deleting
or inserting a child) first undoes its folds: it runs as stock's from then on.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

from torch import nn


class FoldedActivation(nn.Identity):
    """The place of an activation module convert folded into `carrier`; the module is kept
    (not as a child: state_dict and modules() are stock's) to run where a slice cuts the two
    apart. Once its fold is undone (carrier None) it runs the activation itself, in the slices
    taken before that still hold it."""

    def __init__(self, activation: nn.Module, carrier: nn.Module):
        super().__init__()
        self.__dict__["activation_module"] = activation
        self.__dict__["carrier"] = carrier

    def forward(self, x):
        return x if self.carrier is not None else self.activation_module(x)

    def extra_repr(self) -> str:
        by = type(self.carrier).__name__ if self.carrier is not None else "itself"
        return f"{self.activation_module!r} run by {by}"


class WithoutActivation(nn.Module):
    """A genkern layer run without the activation it carries (a slice cut off the activation's
    place): the layer is the child (the same parameters, mode and hooks), called as a copy of
    itself at call time with no activation; other attributes read through to it."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    @property
    def training(self) -> bool:  # the layer's mode (model.eval() reaches the layer, not this)
        layer = self.__dict__.get("_modules", {}).get("layer")
        return layer.training if layer is not None else self.__dict__.get("_training", True)

    @training.setter
    def training(self, mode: bool) -> None:
        self.__dict__["_training"] = mode

    def forward(self, *args, **kwargs):
        bare = copy.copy(self.layer)
        bare.activation = None
        return bare(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("layer"), name)


class FusedSequential(nn.Sequential):
    """See the module docstring. Indexing one child (seq[i]) returns the child itself, its
    activation included."""

    def __getitem__(self, idx):
        if not isinstance(idx, slice):
            return super().__getitem__(idx)
        items = list(self._modules.items())
        chosen = list(range(len(items)))[idx]
        out = OrderedDict((items[i][0], items[i][1]) for i in chosen)
        fused = False
        for place, carrier in _pairs(items):
            lo, hi = sorted((place, carrier))
            if _holds_run(chosen, lo, hi):
                fused = True
                continue
            if place in chosen:
                out[items[place][0]] = items[place][1].activation_module
            if carrier in chosen:
                out[items[carrier][0]] = WithoutActivation(items[carrier][1])
        return (FusedSequential if fused else nn.Sequential)(out)

    def unfold(self) -> nn.Sequential:
        """Undoes the folds in place: each activation module back in its place, its carrier
        without it; the Sequential is a plain nn.Sequential again. Returns it. Slices taken
        before (or the Sequential a slice came from) that hold the same carrier and place stay
        right: the place, no longer folded, runs the activation there."""
        items = list(self._modules.items())
        for place, carrier in _pairs(items):
            name, folded = items[place]
            items[carrier][1].activation = None
            folded.__dict__["carrier"] = None
            self._modules[name] = folded.activation_module
        self.__class__ = nn.Sequential
        return self

    def __setitem__(self, idx, module):
        nn.Sequential.__setitem__(self.unfold(), idx, module)

    def __delitem__(self, idx):
        nn.Sequential.__delitem__(self.unfold(), idx)

    def insert(self, index, module):
        return nn.Sequential.insert(self.unfold(), index, module)


def _pairs(items) -> list[tuple[int, int]]:
    """(index of a FoldedActivation, index of its carrier) over the children `items`."""
    where = {id(m): i for i, (_, m) in enumerate(items)}
    return [
        (i, where[id(m.carrier)])
        for i, (_, m) in enumerate(items)
        if isinstance(m, FoldedActivation) and id(m.carrier) in where
    ]


def _holds_run(chosen: list[int], lo: int, hi: int) -> bool:
    """Whether the children lo..hi appear in `chosen` one after another in their order."""
    run = list(range(lo, hi + 1))
    return any(chosen[k : k + len(run)] == run for k in range(len(chosen) - len(run) + 1))


def fold(seq: nn.Sequential, place: str, carrier: nn.Module) -> None:
    """Puts a FoldedActivation for the activation module at `place` (now run by carrier) there;
    a plain nn.Sequential becomes a FusedSequential (a subclass keeps its class: its slices
    keep the folds, as its indexing does)."""
    seq._modules[place] = FoldedActivation(seq._modules[place], carrier)
    if type(seq) is nn.Sequential:
        seq.__class__ = FusedSequential
