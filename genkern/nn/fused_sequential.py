"""The nn.Sequential that genkern.nn.convert makes of one whose activations it moved.

convert folds an activation module into the layer before it (or moves a ReLU on onto the max
pool after it: its carrier) and leaves a FoldedActivation in its place. Running the Sequential
whole is what it was: its forward calls the pair with _folded=True, the carrier then running the
activation and the place handing its input on; called by themselves (a loop over the layers),
the carrier runs alone and the place runs the activation, as stock's modules. A slice of it
(VGG perceptual losses take `features[:k]`, often before an activation) holds the same children
as the stock slice and computes what it did: where the slice does not hold the whole run of
children from a carrier to its activation's place in their order, that fold is undone (in the
Sequential too: the carrier runs without the activation, the place runs it). Editing the
Sequential (setting, deleting or inserting a child) first undoes its folds: it runs as stock's
from then on.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn.modules import module as _module_globals

from genkern.nn._fused import UnfoldsWhenHooked


class FoldedActivation(UnfoldsWhenHooked, nn.Identity):
    """The place of an activation module convert folded into `carrier`; the module is kept
    (not as a child: state_dict and modules() are stock's) to run where a slice cuts the two
    apart. Once its fold is undone (carrier None) it runs the activation itself, in the slices
    taken before that still hold it, and in its Sequential where a hook on it or its carrier
    undid the fold. Made by `folded`, as an instance of the activation's class too."""

    def __init__(self, activation: nn.Module, carrier: nn.Module):
        nn.Module.__init__(self)  # not the activation class's: its attributes are the kept one's
        self.__dict__["activation_module"] = activation
        self.__dict__["carrier"] = carrier
        carrier.__dict__["folded_place"] = self

    def forward(self, x, *, _folded: bool = False):
        """x where its Sequential runs the fold (its carrier ran the activation); else, called by
        itself or with the fold undone, the activation."""
        return x if _folded and self.carrier is not None else self.activation_module(x)

    @property
    def inplace(self) -> bool:  # while folded, nothing runs here; then the kept module's
        return self.carrier is None and getattr(self.activation_module, "inplace", False)

    @inplace.setter
    def inplace(self, value: bool) -> None:
        self.activation_module.inplace = value

    def _unfold_for_hooks(self) -> None:
        """Undoes this one fold: the carrier runs without the activation, this place with it."""
        if self.carrier is not None:
            self.carrier.activation = None
            self.__dict__["carrier"] = None

    def train(self, mode: bool = True):  # the kept module's mode follows (slices hold it)
        self.activation_module.train(mode)
        return super().train(mode)

    def extra_repr(self) -> str:
        by = type(self.carrier).__name__ if self.carrier is not None else "itself"
        return f"{self.activation_module!r} run by {by}"


class FusedSequential(nn.Sequential):
    """See the module docstring. Indexing one child (seq[i]) returns the child itself, its
    activation included."""

    def forward(self, input):
        """nn.Sequential's, each fold it holds run by its carrier, called with _folded=True; its
        place, which would hand its input on, is not called (but while torch.fx traces, for
        convert's trace=True to join the pair). Called by themselves, the two run as stock's
        modules."""
        children = list(self._modules.values())
        if torch.is_grad_enabled():
            _undo_folds_before_inplace(children)
        tracing = isinstance(input, torch.fx.Proxy)
        for i, module in enumerate(children):
            if isinstance(module, FoldedActivation):
                if module.carrier is not None and _index_of(module.carrier, children, i) >= 0:
                    if tracing:
                        input = module(input, _folded=True)
                    continue
            else:
                place = module.__dict__.get("folded_place")
                if place is not None and place.carrier is module:
                    if _index_of(place, children, i) >= 0:
                        input = _call_folded(module, input, tracing)
                        continue
            input = module(input)
        return input

    def __getitem__(self, idx):
        if not isinstance(idx, slice):
            return super().__getitem__(idx)
        items = list(self._modules.items())
        chosen = list(range(len(items)))[idx]
        fused = False
        for place, carrier in _live_pairs([m for _, m in items]):
            lo, hi = sorted((place, carrier))
            if _holds_run(chosen, lo, hi):
                fused = True
            elif place in chosen or carrier in chosen:
                # the slice holds the children themselves, as stock's (a hook or a slope set
                # through it reaches the Sequential: found by a fuzz, copies were handed out):
                # their fold undone, here and in the Sequential
                items[place][1]._unfold_for_hooks()
        sliced = nn.Sequential(OrderedDict(items[i] for i in chosen))
        if fused:  # (after its children are in: add_module would judge them as edits)
            sliced.__class__ = FusedSequential
        return sliced

    def unfold(self) -> nn.Sequential:
        """Undoes the folds in place: each carrier without its activation, each place running
        it (the place stays: slices taken before, or the Sequential a slice came from, hold the
        same children, and found by a fuzz, put the activation module back and they no longer
        did); the Sequential is a plain nn.Sequential again. Returns it."""
        return _unfolded(self)

    # Edits: replacing, removing or inserting a child, or repeating the Sequential, undo the
    # folds first; so does adding (append, extend, +=: through add_module) a module that changes
    # its input in place (a fused layer before it may keep its output for the backward where
    # stock's kept its input).
    def __setitem__(self, idx, module):
        _unfold_pair_of(module)  # (a member of a fold elsewhere: found by a fuzz, B[1] = A[1])
        nn.Sequential.__setitem__(_unfolded(self), idx, module)

    def __delitem__(self, idx):
        nn.Sequential.__delitem__(_unfolded(self), idx)

    def __setattr__(self, name, value):
        if isinstance(value, nn.Module) and name in self.__dict__.get("_modules", {}):
            _unfold_pair_of(value)
            return nn.Sequential.__setattr__(_unfolded(self), name, value)
        return super().__setattr__(name, value)

    def add_module(self, name, module):
        # a member of a fold, here or elsewhere, called again (found by a fuzz,
        # seq.append(seq[1])) first: unfolded, an in-place ReLU then reads as one
        _unfold_pair_of(module)
        if name in self._modules or (module is not None and _starts_inplace(module)):
            _unfolded(self)
        return nn.Sequential.add_module(self, name, module)

    register_module = add_module

    def insert(self, index, module):
        _unfold_pair_of(module)
        return nn.Sequential.insert(_unfolded(self), index, module)

    def pop(self, key):
        return nn.Sequential.pop(_unfolded(self), key)

    def __add__(self, other):
        if isinstance(other, nn.Sequential) and _starts_inplace(other):
            _unfolded(self)
        return _with_pairs(nn.Sequential.__add__(self, other))

    def __radd__(self, other):  # (tried before other's __add__: a subclass of its type)
        return _with_pairs(nn.Sequential.__add__(other, self))

    def __mul__(self, other):
        return nn.Sequential.__mul__(_unfolded(self), other)

    def __rmul__(self, other):
        return nn.Sequential.__rmul__(_unfolded(self), other)

    def __imul__(self, other):
        return nn.Sequential.__imul__(_unfolded(self), other)


# The places of the activation modules convert folds, instances of their classes too (code that
# finds activations by type, isinstance(m, nn.ReLU), finds these: found by a fuzz, guided
# backprop hooked no ReLU of a converted model). Module-level classes: pickling finds them.
class FoldedReLU(FoldedActivation, nn.ReLU):
    pass


class FoldedLeakyReLU(FoldedActivation, nn.LeakyReLU):
    @property
    def negative_slope(self) -> float:
        return self.activation_module.negative_slope

    @negative_slope.setter
    def negative_slope(self, value: float) -> None:  # (as stock's, read at each call)
        self.activation_module.negative_slope = value
        if self.carrier is not None:
            self.carrier.negative_slope = float(value)


class FoldedTanh(FoldedActivation, nn.Tanh):
    pass


class FoldedSigmoid(FoldedActivation, nn.Sigmoid):
    pass


class FoldedSiLU(FoldedActivation, nn.SiLU):
    pass


_FOLDED = {
    nn.ReLU: FoldedReLU,
    nn.LeakyReLU: FoldedLeakyReLU,
    nn.Tanh: FoldedTanh,
    nn.Sigmoid: FoldedSigmoid,
    nn.SiLU: FoldedSiLU,
}


def folded(activation: nn.Module, carrier: nn.Module) -> FoldedActivation:
    """The place of `activation`, now run by carrier (an instance of the activation's class)."""
    return _FOLDED.get(type(activation), FoldedActivation)(activation, carrier)


def _with_pairs(seq: nn.Sequential) -> nn.Sequential:
    """seq, a FusedSequential if it holds a carrier and its place (the children of one); a pair
    whose members it holds twice (seq + seq) unfolded, as convert leaves modules used twice."""
    members = list(seq.modules(remove_duplicate=False))
    for module in members:
        if sum(m is module for m in members) > 1:
            _unfold_pair_of(module)
    if _live_pairs(list(seq._modules.values())):
        seq.__class__ = FusedSequential
    return seq


def _unfold_pair_of(module) -> None:
    """Undoes the fold of each member of a fold in module (itself or one it holds: a carrier or
    a place): it is about to be called in a second place, which the fold would change."""
    if not isinstance(module, nn.Module):
        return
    for member in module.modules():
        if isinstance(member, FoldedActivation) or "folded_place" in member.__dict__:
            member._unfold_for_hooks()


def _unfolded(seq: nn.Sequential) -> nn.Sequential:
    """seq with its folds undone (FusedSequential.unfold), whatever its class now (an edit of a
    FusedSequential may already have made it a plain one: found by a fuzz,
    seq.insert(i, seq.pop(j)))."""
    children = list(seq._modules.values())
    for place, _ in _live_pairs(children):
        children[place]._unfold_for_hooks()
    seq.__class__ = nn.Sequential
    return seq


def _live_pairs(children: list[nn.Module]) -> list[tuple[int, int]]:
    """(index of a FoldedActivation, index of its carrier) over `children`: the folds they hold
    both members of."""
    pairs = []
    for i, m in enumerate(children):
        if isinstance(m, FoldedActivation) and m.carrier is not None:
            j = _index_of(m.carrier, children, i)
            if j >= 0:
                pairs.append((i, j))
    return pairs


def _index_of(member: nn.Module, children: list[nn.Module], i: int) -> int:
    """The index of the other member of the fold of children[i] among children, or -1: next to
    it first (a layer and its activation's place, a place and the pool after it)."""
    if i and children[i - 1] is member:
        return i - 1
    if i + 1 < len(children) and children[i + 1] is member:
        return i + 1
    return next((k for k, c in enumerate(children) if c is member), -1)


def _holds_run(chosen: list[int], lo: int, hi: int) -> bool:
    """Whether the children lo..hi appear in `chosen` one after another in their order."""
    run = list(range(lo, hi + 1))
    return any(chosen[k : k + len(run)] == run for k in range(len(chosen) - len(run) + 1))


def fold(seq: nn.Sequential, place: str, carrier: nn.Module) -> None:
    """Puts a FoldedActivation for the activation module at `place` (now run by carrier) there;
    the plain nn.Sequential becomes a FusedSequential."""
    seq._modules[place] = folded(seq._modules[place], carrier)
    seq.__class__ = FusedSequential


def _call_folded(carrier: nn.Module, input, tracing: bool):
    """carrier(input, _folded=True); by its forward itself where Module.__call__ would do just
    that (no hooks, no tracing): a microsecond less per fold and call, which a batch-1 forward
    notices (the CIFAR CNN's: 5% of its time in the Sequentials' own steps)."""
    g = _module_globals
    if (
        tracing
        or carrier._forward_hooks
        or carrier._forward_pre_hooks
        or carrier._backward_hooks
        or carrier._backward_pre_hooks
        or g._global_forward_hooks
        or g._global_forward_pre_hooks
        or g._global_backward_hooks
        or g._global_backward_pre_hooks
        or torch._C._get_tracing_state()
    ):
        return carrier(input, _folded=True)
    return carrier.forward(input, _folded=True)


def _keeps_output(carrier: nn.Module) -> bool:
    """Whether the carrier's fused activation keeps its output for the backward where stock's
    kept its input: a leaky_relu (slope >= 0), a relu moved onto a max pool."""
    act = getattr(carrier, "activation", None)
    if act == "leaky_relu":
        return carrier.negative_slope >= 0
    return act == "relu" and isinstance(carrier, nn.MaxPool2d)


def _undo_folds_before_inplace(children: list[nn.Module]) -> None:
    """Undoes each fold among a Sequential's children whose carrier keeps its output where the
    module after it now changes its input in place (m.inplace = True since convert, which
    checked then): its backward would refuse (the output it kept changed), where stock's
    trains."""
    for place, k in _live_pairs(children):
        if _keeps_output(children[k]) and next_inplace(children, k, False):
            children[place]._unfold_for_hooks()


def chains_children(module: nn.Module) -> bool:
    """Whether the module runs nn.Sequential's forward (each child on the previous one's output,
    only the last output returned): a subclass with a forward of its own (returning every
    child's output, or summing parallel branches) may use what a fold would change."""
    return (
        isinstance(module, nn.Sequential)
        and type(module).forward in (nn.Sequential.forward, FusedSequential.forward)
        and "forward" not in vars(module)
    )


# Modules that may hand their input on as it is, or as a view of it (Dropout in eval mode,
# Flatten of a 2-D tensor): an in-place module after them changes what came before them.
_PASS_THROUGH = (
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


def _scan(modules) -> str | None:
    """'inplace' where the first of the modules that does not hand its input on changes it in
    place (nested Sequentials looked into), 'blocked' where it does not, None past them all."""
    for module in modules:
        if getattr(module, "inplace", False):
            return "inplace"
        if isinstance(module, nn.Sequential):  # (a forward of its own: its children, as if)
            found = _scan(module.children())
            if found is not None:
                return found
        elif not isinstance(module, _PASS_THROUGH):
            return "blocked"
    return None


def _starts_inplace(module: nn.Module) -> bool:
    """Whether the module's first step changes its input in place (Dropout(inplace=True), ...,
    or a Sequential starting with one, past modules that hand their input on)."""
    return _scan([module]) == "inplace"


def next_inplace(children: list[nn.Module], k: int, then_inplace: bool) -> bool:
    """Whether what runs after children[k] of a chaining Sequential (past modules that hand
    their input on; past its end, what follows the Sequential: then_inplace) changes its input in
    place: a fused layer that keeps its output for the backward where stock's kept its input
    would then refuse the backward, where stock's trains."""
    found = _scan(children[k + 1 :])
    return then_inplace if found is None else found == "inplace"
