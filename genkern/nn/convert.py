"""genkern.nn.convert: make a stock model genkern with one call.

Every torch.nn layer genkern has a drop-in for is swapped in place of its class (parameters,
buffers and hooks kept, so state_dict keys and values stay the same); an activation module that
directly follows a layer with a fused activation in an nn.Sequential is folded into that layer
and replaced by its place (an instance of its class that runs nothing while folded; a hook
registered on it or on the layer undoes the fold); a ReLU so folded into a layer directly
followed by a max pool moves onto the pool (relu commutes with max: the same values and
gradients), so that the layer's full-size output is not kept for the backward, only the pooled
one. With trace=True, torch.fx
finds layer-then-activation pairs in models whose forward calls modules one by one. With
fold_bn=True (eval models), a BatchNorm2d directly after a conv / transposed conv is folded into
its weights. Layers registered in more than one place, or called more than once in a traced
forward, are left unfused, as are pairs that hooks watch, pairs in a subclass of nn.Sequential
(its class is kept, whose slices and edits convert cannot follow), and folds whose fused form
keeps its output for the backward where stock's kept its input when an in-place module follows.
A parametrized layer (spectral_norm, weight_norm: SNGAN's discriminators) becomes the drop-in
with the same parametrization, and keeps its BatchNorm unfolded. A converted nn.Sequential whose
activations moved is a FusedSequential (genkern/nn/fused_sequential.py): its slices compute what
the stock slices did. A fold runs only where its Sequential runs it whole: a layer called by
itself (a loop over the Sequential's layers, self.seq[0](x)) runs alone, as stock's, and the
activation's place runs the activation.
trace=True returns a torch.fx GraphModule: the path the forward took in the mode it was traced
in, without the model's class, other methods or uncalled modules; each folded pair there is
one call of _run_folded_pair on the modules the graph finds at their paths (a pair with either
replaced, or hooked, runs unfused).
"""

from __future__ import annotations

import copy
import inspect
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from genkern.nn._fused import activation_module
from genkern.nn.fused_sequential import (
    FoldedActivation,
    FusedSequential,
    chains_children,
    fold,
    folded,
    next_inplace,
)

# torch.nn activation module -> (genkern activation name, its negative_slope)
_ACTIVATION_MODULES = {
    nn.ReLU: lambda m: ("relu", 0.01),
    nn.LeakyReLU: lambda m: ("leaky_relu", float(m.negative_slope)),
    nn.Tanh: lambda m: ("tanh", 0.01),
    nn.Sigmoid: lambda m: ("sigmoid", 0.01),
    nn.SiLU: lambda m: ("silu", 0.01),
}
_ACTIVATION_FUNCTIONS = {
    F.relu: "relu",
    torch.relu: "relu",
    F.leaky_relu: "leaky_relu",
    torch.tanh: "tanh",
    F.tanh: "tanh",
    torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid",
    F.silu: "silu",
}


def _drop_ins() -> dict[type, type]:
    """torch.nn class -> genkern.nn class, for the drop-ins that exist."""
    import genkern.nn as gnn

    pairs = {}
    for name in (
        "Conv2d",
        "ConvTranspose2d",
        "Linear",
        "BatchNorm2d",
        "MaxPool2d",
        "AvgPool2d",
        "Upsample",
    ):
        ours = getattr(gnn, name, None)
        if ours is not None:
            pairs[getattr(nn, name)] = ours
    return pairs


def _hooked(module: nn.Module) -> bool:
    """Whether hooks watch the module: folding an activation into or out of it would change what
    they see (a forward hook on a conv would get relu's output), or skip them (on the ReLU)."""
    return any(
        getattr(module, name, None)
        for name in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
        )
    )


def _fusable(module: nn.Module) -> bool:
    return (
        hasattr(module, "activation")
        and getattr(module, "activation", 1) is None
        and type(module).__module__.startswith("genkern.")
        and not _hooked(module)
    )


def _replaceable(module: nn.Module) -> bool:
    """Whether the drop-in computes what this configuration of the torch layer does: genkern's
    Upsample is nearest only (found by the fuzz: a bilinear one was swapped and ran nearest)."""
    if type(module) is nn.Upsample:
        return module.mode == "nearest" and not module.recompute_scale_factor
    return True


def _layer_class(module: nn.Module) -> type:
    """The torch layer class of the module: a parametrized one (spectral_norm, weight_norm) is an
    instance of torch's per-module subclass of it, ParametrizedConv2d."""
    cls = type(module)
    base = cls.__base__
    if parametrize.is_parametrized(module) and cls.__name__ == f"Parametrized{base.__name__}":
        return base
    return cls


def _swap(module: nn.Module, drop_ins: dict[type, type]) -> nn.Module:
    """The module as its genkern drop-in (same object state), or unchanged."""
    layer_cls = _layer_class(module)
    cls = drop_ins.get(layer_cls)  # exact type: subclasses of torch layers may differ
    if cls is None or not _replaceable(module):
        return module
    if layer_cls is not type(module):
        # the same parametrization on the drop-in: torch's subclass holds a property per
        # parametrized tensor (computed from module.parametrizations) and its pickling rules
        own = {
            k: v
            for k, v in vars(type(module)).items()
            if k not in ("__module__", "__qualname__", "__doc__", "__dict__", "__weakref__")
        }
        cls = type(f"Parametrized{cls.__name__}", (cls,), own)
    new = cls.__new__(cls)
    new.__dict__.update(module.__dict__)
    defaults = {"backend": "auto"}
    if hasattr(cls, "_init_activation"):
        defaults.update(activation=None, negative_slope=0.01)
    for key, value in defaults.items():
        new.__dict__.setdefault(key, value)
    return new


def _activation_of(module: nn.Module):
    for cls, spec in _ACTIVATION_MODULES.items():
        if type(module) is cls:
            return spec(module)
    return None


def _convert_children(
    parent: nn.Module,
    drop_ins: dict[type, type],
    then_inplace: bool = False,
    activations: bool = True,
    uses: Counter | None = None,
    swapped: dict | None = None,
) -> None:
    """uses: how many times each module is registered in the model (a module used twice is
    neither fused nor folded); swapped: the drop-in made of each module, so that one
    registered twice stays one module (found by a fuzz: hooks on one ran once)."""
    uses = Counter() if uses is None else uses
    swapped = {} if swapped is None else swapped
    chains = chains_children(parent)
    children = list(parent._modules.values())
    for k, (name, child) in enumerate(list(parent._modules.items())):
        if child is None:
            continue
        if id(child) not in swapped:
            # a child of a forward of its own may have its output changed in place there (out
            # += x after a block): taken as so (found by a fuzz: a residual block ending in a
            # leaky_relu)
            follows = next_inplace(children, k, then_inplace) if chains else True
            _convert_children(child, drop_ins, follows, activations, uses, swapped)
            swapped[id(child)] = _swap(child, drop_ins)
            uses[id(swapped[id(child)])] = uses[id(child)]
        if swapped[id(child)] is not child:
            setattr(parent, name, swapped[id(child)])
    # folds in a plain nn.Sequential only (it becomes a FusedSequential, whose slices and edits
    # undo what they must); a subclass keeps its class, whose slices and edits would not
    if activations and type(parent) in (nn.Sequential, FusedSequential):
        names = list(parent._modules)
        for k, (a, b) in enumerate(zip(names, names[1:])):
            layer, act = getattr(parent, a), _activation_of(getattr(parent, b))
            if uses[id(layer)] > 1 or uses[id(getattr(parent, b))] > 1:
                continue
            # the fused leaky_relu (slope >= 0) keeps its output, stock's its input
            keeps_output = act is not None and act[0] == "leaky_relu" and act[1] >= 0
            if keeps_output and next_inplace(list(parent.children()), k + 1, then_inplace):
                continue
            if act is not None and _fusable(layer) and not _hooked(getattr(parent, b)):
                layer.activation, layer.negative_slope = act
                fold(parent, b, layer)
        _relu_onto_max_pools(parent, then_inplace, uses)


def _relu_onto_max_pools(seq: nn.Sequential, then_inplace: bool, uses: Counter) -> None:
    """layer(relu) [Identity...] MaxPool2d -> layer, MaxPool2d(relu): relu(max(z)) == max(relu(z))
    bit for bit, and the gradient reaches the same element (the first maximum of z where it is
    positive; zero elsewhere either way). Only relu: a leaky_relu or sigmoid can round two
    different inputs to one output, and the first of those ties need not be z's maximum; and
    not onto a pool returning its indices (those would differ where a window is all <= 0). Only
    a relu convert folded (its place then names the pool as its carrier, for slices)."""
    from genkern.nn.pooling import MaxPool2d

    children = list(seq.children())
    kept = [(i, m) for i, m in enumerate(children) if not isinstance(m, nn.Identity)]
    for (i, layer), (j, pool) in zip(kept, kept[1:]):
        place = next(
            (
                m
                for m in children[i + 1 : j]
                if isinstance(m, FoldedActivation) and m.carrier is layer
            ),
            None,
        )
        if (
            place is not None
            and getattr(layer, "activation", None) == "relu"
            and type(pool) is MaxPool2d
            and pool.activation is None
            and uses[id(pool)] <= 1
            and not (_hooked(layer) or _hooked(pool))  # their outputs / the pool's input change
            and pool.dilation in (1, (1, 1))  # every window then holds an input element (no -inf)
            and not pool.return_indices  # a window of z <= 0: relu's first 0, not z's maximum
            and not next_inplace(children, j, then_inplace)  # the pool with relu keeps its output
        ):
            layer.activation, pool.activation = None, "relu"
            place.__dict__["carrier"] = pool
            layer.__dict__.pop("folded_place", None)
            pool.__dict__["folded_place"] = place


def _fold_bn_in_sequentials(model: nn.Module) -> None:
    from genkern.nn import fold_batch_norm

    fold_batch_norm(model)


class _Tracer(torch.fx.Tracer):
    """Keeps genkern's layers as leaves, as torch.fx does torch.nn's (not a FusedSequential:
    traced through, as an nn.Sequential)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        ours = type(m).__module__.startswith("genkern.nn") and not isinstance(m, nn.Sequential)
        return ours or super().is_leaf_module(m, qualname)


def _inplace_use(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether a traced node may change its first input in place: an in-place method (add_,
    mul_, ...), inplace=True given to a function, or a module with inplace set; or one not
    known (an unknown method or module: taken as so)."""
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.startswith("_")
    if node.op == "call_function":
        return bool(node.kwargs.get("inplace", False)) or getattr(
            node.target, "__name__", ""
        ).endswith("_")
    if node.op == "call_module":
        return bool(getattr(modules[node.target], "inplace", False))
    return False


def _traced(model: nn.Module) -> torch.fx.GraphModule:
    """model as torch.fx traces it: genkern's layers and genkern.ops' functions as leaves (a
    custom forward may call the ops: found by a fuzz, the reference VAE's reparameterize raised
    on a Proxy), and forward's parameters that default to None taken as None (the branch a
    plain call takes; the graph asserts they are None: found by a fuzz, the VAE's eps=None was
    traced as a tensor, and the traced model failed on a call without it)."""
    import math

    from genkern import ops

    params = inspect.signature(model.forward).parameters.values()
    concrete = {p.name: None for p in params if p.default is None}
    graph = _Tracer(autowrap_modules=(math, ops)).trace(model, concrete_args=concrete or None)
    for node in graph.nodes:  # torch.fx's placeholders of those, and its check of them
        if node.op == "placeholder":  # (a string annotation, as `from __future__ import
            node.type = None  # annotations` makes them, made the GraphModule unpicklable)
        if node.op == "placeholder" and node.target not in concrete:
            base = node.target.rsplit("_", 1)[0]  # (renamed x_1: a keyword call failed)
            node.target = base if base in concrete else node.target
        elif node.op == "call_function" and node.target is torch.fx._symbolic_trace._assert_is_none:
            # torch.fx's own check does not survive pickling: after torch.load, tracing failed
            # in the whole process (found by a fuzz)
            node.target, node.args = _traced_as_none, (node.args[0], node.args[1].split()[0])
    return torch.fx.GraphModule(model, graph, type(model).__name__)


def _traced_as_none(value, name: str) -> None:
    """The check a traced forward makes of a parameter traced as None (its default)."""
    if isinstance(value, torch.fx.Proxy):  # torch.fx traces the model again (torch.load): kept
        return value.tracer.create_proxy("call_function", _traced_as_none, (value, name), {})
    if value is not None:
        raise ValueError(
            f"this model, traced by genkern.nn.convert(trace=True), took forward's `{name}` as "
            "None, its default, and runs that branch only: call it without it (or convert "
            "without trace=True)"
        )


def _trace_and_fuse(model: nn.Module) -> nn.Module:
    """Folds layer -> activation pairs found by torch.fx (call_module or call_function)."""
    gm = _traced(model)
    modules = dict(gm.named_modules())
    # a module called more than once keeps its activation for every call (found by the fuzz:
    # relu(c(x)) + c(x) got relu on both)
    calls = Counter(node.target for node in gm.graph.nodes if node.op == "call_module")
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not _fusable(modules[node.target]):
            continue
        if len(node.users) != 1 or calls[node.target] != 1:
            continue
        user = next(iter(node.users))
        act = None
        if user.op == "call_module" and user.args[:1] == (node,):
            act = _activation_of(modules[user.target])
        elif (
            user.op == "call_function"
            and user.target in _ACTIVATION_FUNCTIONS
            and user.args[:1] == (node,)
        ):
            name = _ACTIVATION_FUNCTIONS[user.target]
            slope = 0.01
            if name == "leaky_relu":
                slope = float(
                    user.args[1] if len(user.args) > 1 else user.kwargs.get("negative_slope", 0.01)
                )
            act = (name, slope)
        if act is None or (
            user.op == "call_module" and (_hooked(modules[user.target]) or calls[user.target] != 1)
        ):  # (an activation module called twice stays one: found by a fuzz)
            continue
        # the fused leaky_relu keeps its output for the backward (stock's its input): not where
        # an in-place op uses it (found by a fuzz: F.dropout(..., inplace=True) after it)
        if (
            act[0] == "leaky_relu"
            and act[1] >= 0
            and any(_inplace_use(u, modules) for u in user.users)
        ):
            continue
        carrier = modules[node.target]
        carrier.activation, carrier.negative_slope = act
        _trace_place(gm, node, user, carrier, act)
    _pairs_through_calls(gm)
    gm.graph.lint()
    gm.recompile()
    return gm


def _trace_place(gm, node, user, carrier: nn.Module, act) -> None:
    """The traced activation `user` becomes its place, a FoldedActivation (a call of F.relu, ...
    gets a module of its own), which _pairs_through_calls then joins to its carrier."""
    if user.op == "call_module":
        name, kept = user.target, gm.get_submodule(user.target)
    else:
        kept = activation_module(*act)
        kept.inplace = bool(user.kwargs.get("inplace", False))
        name = f"{node.target.replace('.', '_')}_{act[0]}"
        while hasattr(gm, name):
            name += "_"
    gm.add_submodule(name, folded(kept, carrier))  # (replaces a module at user.target)
    with gm.graph.inserting_after(node):
        place = gm.graph.call_module(name, (node,))
    user.replace_all_uses_with(place)
    gm.graph.erase_node(user)


def _pairs_through_calls(gm) -> None:
    """Each folded pair in the graph (a carrier's call and its place's, the place's after it, or
    before it for a ReLU moved onto a max pool; folded in a traced forward or in a Sequential it
    traced through) becomes one call of _run_folded_pair on the modules at their paths."""
    modules = dict(gm.named_modules())
    path_of = {id(m): name for name, m in modules.items()}
    calls = Counter(node.target for node in gm.graph.nodes if node.op == "call_module")
    for place_node in list(gm.graph.nodes):
        place = modules.get(place_node.target) if place_node.op == "call_module" else None
        if not isinstance(place, FoldedActivation) or place.carrier is None:
            continue
        path = path_of.get(id(place.carrier))
        if calls[place_node.target] > 1 or calls[path] > 1:  # (a Sequential's child called again
            place._unfold_for_hooks()  # by the forward itself: found by a fuzz) unfused
            continue
        before = place_node.args[0] if place_node.args else None
        after = next(iter(place_node.users)) if len(place_node.users) == 1 else None
        for first, second, place_first in ((before, place_node, False), (place_node, after, True)):
            carrier_node = second if place_first else first
            if not (
                isinstance(carrier_node, torch.fx.Node)
                and carrier_node.op == "call_module"
                and carrier_node.target == path
                and len(first.users) == 1
                and second.args[:1] == (first,)
            ):
                continue
            args = (place_node.args[0], *carrier_node.args[1:]) if place_first else first.args
            with gm.graph.inserting_before(second):
                pair = [gm.graph.get_attr(path), gm.graph.get_attr(place_node.target)]
                joined = gm.graph.call_function(
                    _run_folded_pair, (*pair, place_first, *args), carrier_node.kwargs
                )
            second.replace_all_uses_with(joined)
            gm.graph.erase_node(second)
            gm.graph.erase_node(first)
            break


def _run_folded_pair(carrier, place, place_first: bool, *args, **kwargs):
    """A folded pair of a traced model, on the modules the graph finds at their paths now: the
    layer alone while the place is still folded into it; else both, unfused, in their order,
    what is left of the fold undone (a hook on either undid it, or one was replaced, as
    SyncBatchNorm.convert_sync_batchnorm replaces a batch norm: found by a fuzz, the activation
    was dropped). The place is called as a module (its hooks see stock's arguments)."""
    proxy = next((a for a in args if isinstance(a, torch.fx.Proxy)), None)
    if proxy is not None:  # torch.fx traces the model again (torch.load): kept as it is
        pair = (carrier, place, place_first, *args)
        return proxy.tracer.create_proxy("call_function", _run_folded_pair, pair, kwargs)
    kwargs = {k: v for k, v in kwargs.items() if k != "_folded"}  # (a Sequential's call's)
    if carrier is not None and getattr(place, "carrier", None) is carrier:
        return carrier(*args, _folded=True, **kwargs)
    for module in (place, getattr(carrier, "folded_place", None)):
        if isinstance(module, FoldedActivation):
            module._unfold_for_hooks()
    if place_first:
        return carrier(place(args[0]), *args[1:], **kwargs)
    return place(carrier(*args, **kwargs))


def convert(
    model: nn.Module,
    inplace: bool = False,
    trace: bool = False,
    fold_bn: bool = False,
    channels_last: bool = False,
    fold_activations: bool = True,
) -> nn.Module:
    """The model with genkern layers (see the module docstring). Returns the converted model;
    with inplace=False (default) the given model is left untouched.

    fold_activations=False swaps the layers but folds no activation module into them (nor with
    trace=True): for code that takes a model's children apart itself, as
    nn.Sequential(*list(features)[:k]) does, where a folded activation would come along with its
    layer.

    channels_last=True also moves the 4-D weights to channels_last, so activations stay NHWC
    from the first conv to the last (oneDNN's native layout: no per-layer NCHW <-> blocked
    reorders of the activations); outputs then come out channels_last, with the same values.
    """
    if not inplace:
        try:
            model = copy.deepcopy(model)
        except RuntimeError as exc:  # (a pruned model, the old weight_norm: non-leaf weights)
            raise RuntimeError(
                f"genkern.nn.convert copies the model first (inplace=False), and torch could not "
                f"copy this one: {exc} Pass inplace=True to convert the model itself."
            ) from exc
    drop_ins = _drop_ins()
    if fold_bn:
        if model.training:
            raise RuntimeError(
                "convert(fold_bn=True) needs an eval model: call model.eval() "
                "first (BatchNorm in training uses batch statistics)"
            )
        _fold_bn_in_sequentials(model)
    uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    top = _swap(model, drop_ins)
    _convert_children(top, drop_ins, activations=fold_activations, uses=uses)
    if trace and fold_activations:
        top = _trace_and_fuse(top)
    if channels_last:
        top.to(memory_format=torch.channels_last)
    return top
