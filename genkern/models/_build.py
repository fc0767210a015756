"""The one switch between the stock and the genkern build of a reference model."""

from __future__ import annotations

from torch import nn

IMPLS = ("genkern", "torch")


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of 'genkern', 'torch', but got {impl!r}")
    return impl


def finish(module: nn.Module, impl: str) -> nn.Module:
    """Converts the stock submodules of `module` in place when impl == "genkern", with
    channels_last weights: the genkern build keeps its activations NHWC (same values, same
    parameter names; the forwards flatten with .flatten, which any layout allows)."""
    if check_impl(impl) == "genkern":
        from genkern.nn import convert

        for name, child in list(module.named_children()):
            setattr(module, name, convert(child, inplace=True, channels_last=True))
    return module
