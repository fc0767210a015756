"""The one switch between the stock and the genkern build of a reference model."""

from __future__ import annotations

from torch import nn

IMPLS = ("genkern", "torch")


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of 'genkern', 'torch', but got {impl!r}")
    return impl


def finish(module: nn.Module, impl: str) -> nn.Module:
    """Converts the stock submodules of `module` in place when impl == "genkern". The layout
    stays NCHW, as the stock build's (an in-place random init after construction fills a
    channels_last weight in memory order: other values from the same seed); for speed on the
    CPU, `model.to(memory_format=torch.channels_last)` as with any model (the forwards flatten
    with .flatten, which any layout allows)."""
    if check_impl(impl) == "genkern":
        from genkern.nn import convert

        for name, child in list(module.named_children()):
            setattr(module, name, convert(child, inplace=True))
    return module
