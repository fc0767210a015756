"""Autocast for the genkern builds. torch.autocast casts the inputs of the stock ops it knows;
genkern's ops are custom ops it does not know, so under autocast a genkern layer can meet a
bfloat16 input (from a stock op, or from the stock ops inside a reference kernel) with float32
weights, which the ops refuse like torch does. `enable(model)` makes the genkern layers with
weights do what autocast does for nn.Conv2d / nn.Linear (BatchNorm2d too: its weight and bias
in the input's dtype; the running statistics stay float32): while autocast is on, run in the
autocast dtype on the input and on per-call casts of the weights (gradients flow back to the
float32 parameters). Outside autocast the layers are untouched. State dict keys do not change."""

from __future__ import annotations

import functools

import torch
from torch import nn


def _cast_layers(model: nn.Module):
    from genkern import nn as gnn

    types = (gnn.Conv2d, gnn.ConvTranspose2d, gnn.Linear, gnn.BatchNorm2d)
    return [m for m in model.modules() if isinstance(m, types)]


def _autocast_forward(module: nn.Module, forward):
    @functools.wraps(forward)
    def run(input, *args, **kwargs):
        device_type = input.device.type
        if not torch.is_autocast_enabled(device_type):
            return forward(input, *args, **kwargs)
        dtype = torch.get_autocast_dtype(device_type)
        saved = {}
        try:
            for name in ("weight", "bias"):
                p = module._parameters.get(name)
                if p is not None and p.dtype != dtype:
                    saved[name] = p
                    module._parameters[name] = p.to(dtype)
            with torch.autocast(device_type, enabled=False):
                return forward(input.to(dtype), *args, **kwargs)
        finally:
            module._parameters.update(saved)

    return run


def enable(model: nn.Module) -> nn.Module:
    """Makes the genkern layers of `model` follow autocast (in place); returns the model."""
    for m in _cast_layers(model):
        if not getattr(m, "_genkern_autocast", False):
            m.forward = _autocast_forward(m, m.forward)
            m._genkern_autocast = True
    return model
