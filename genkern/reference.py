"""The specification: every genkern op written with stock PyTorch ops, in the clearest form.

Tests, `genkern check` and the benchmarks compare against these (upcast to float64). The "torch"
backend runs them too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genkern import activations as A


def activation(z: torch.Tensor, name: str | None, negative_slope: float = 0.01) -> torch.Tensor:
    """act(z) for an activation name (None is the identity)."""
    act = A.activation_id(name)
    if act == A.RELU:
        return F.relu(z)
    if act == A.LEAKY_RELU:
        return F.leaky_relu(z, negative_slope)
    if act == A.TANH:
        return torch.tanh(z)
    if act == A.SIGMOID:
        return torch.sigmoid(z)
    if act == A.SILU:
        return F.silu(z)
    return z


def activation_backward(
    grad: torch.Tensor, saved: torch.Tensor | None, act: int, negative_slope: float
) -> torch.Tensor:
    """grad * act'(z) from the saved tensor (act's output or input, see activations.saves_output),
    by ATen's own backward kernels."""
    aten = torch.ops.aten
    if act == A.RELU:
        return aten.threshold_backward(grad, saved, 0)
    if act == A.LEAKY_RELU:
        return aten.leaky_relu_backward(
            grad, saved, negative_slope, A.saves_output(act, negative_slope)
        )
    if act == A.TANH:
        return aten.tanh_backward(grad, saved)
    if act == A.SIGMOID:
        return aten.sigmoid_backward(grad, saved)
    if act == A.SILU:
        return aten.silu_backward(grad, saved)
    return grad


def conv2d(
    x,
    weight,
    bias=None,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    activation=None,
    negative_slope=0.01,
):
    """act(conv2d(x, weight, bias))."""
    z = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    return globals()["activation"](z, activation, negative_slope)


# ---- transposed conv and linear (+ activation) ----


def conv_transpose2d(
    x,
    weight,
    bias=None,
    stride=1,
    padding=0,
    output_padding=0,
    groups=1,
    dilation=1,
    activation=None,
    negative_slope=0.01,
):
    """act(conv_transpose2d(x, weight, bias))."""
    z = F.conv_transpose2d(x, weight, bias, stride, padding, output_padding, groups, dilation)
    return globals()["activation"](z, activation, negative_slope)


def linear(x, weight, bias=None, activation=None, negative_slope=0.01):
    """act(linear(x, weight, bias))."""
    z = F.linear(x, weight, bias)
    return globals()["activation"](z, activation, negative_slope)
