"""Activation names, their kernel ids, and which tensor their backward needs.

Mirrors csrc/include/genkern/activation.h (C++/CUDA) and genkern/triton/activations.py (Triton):
the ids and the `saves_output` rule must stay identical in all three.
"""

from __future__ import annotations

import numbers

import torch

IDENTITY, RELU, LEAKY_RELU, TANH, SIGMOID, SILU = range(6)

_IDS = {
    None: IDENTITY,
    "identity": IDENTITY,
    "relu": RELU,
    "leaky_relu": LEAKY_RELU,
    "tanh": TANH,
    "sigmoid": SIGMOID,
    "silu": SILU,
}
NAMES = ("relu", "leaky_relu", "tanh", "sigmoid", "silu")
ID_TO_NAME = {
    IDENTITY: None,
    RELU: "relu",
    LEAKY_RELU: "leaky_relu",
    TANH: "tanh",
    SIGMOID: "sigmoid",
    SILU: "silu",
}


def activation_id(name: str | None) -> int:
    """The kernel id of an activation name; ValueError listing the valid names otherwise."""
    try:
        return _IDS[name]
    except (KeyError, TypeError):
        valid = ", ".join(repr(n) for n in NAMES)
        raise ValueError(f"activation must be None or one of {valid}, but got {name!r}") from None


def as_float(value, name: str) -> float:
    """value as a float where it is a real number (numpy's included) or a 0-dim tensor, as
    torch's argument parser takes a float argument; bools are not (found by fuzzes: np.float32
    or tensor slopes, momenta and betas were refused where stock computes)."""
    if not isinstance(value, bool) and (
        isinstance(value, numbers.Real) or (isinstance(value, torch.Tensor) and value.dim() == 0)
    ):
        return float(value)
    raise TypeError(f"{name} must be a float, but got {type(value).__name__}")


def check_negative_slope(negative_slope: float) -> float:
    return as_float(negative_slope, "negative_slope")


def saves_output(act: int, negative_slope: float) -> bool:
    """True when the backward needs act's output, False when it needs act's input."""
    if act == SILU:
        return False
    if act == LEAKY_RELU:
        return negative_slope >= 0
    return True


def needs_saved(act: int) -> bool:
    """Whether the backward needs any saved tensor at all (identity needs none)."""
    return act != IDENTITY
