"""genkern.ops.linear: act(x @ weight.T + bias), fused, one custom op on every backend.

Inputs of any rank >= 1 are flattened to [M, K] rows (a view when x allows it) before the custom
op, whose kernels are all 2-D GEMMs; the result takes x's leading dims back."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from genkern import activations as A
from genkern import backends, reference
from genkern.ops import _checks, _fused, _registry


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    negative_slope: float = 0.01,
    backend: str = "auto",
) -> torch.Tensor:
    """act(F.linear(x, weight, bias)) in one fused op; x is [..., in_features] of any rank >= 1,
    weight [out_features, in_features], bias [out_features] or None.

    `activation` is None, "relu", "leaky_relu" (with `negative_slope`), "tanh", "sigmoid" or
    "silu"; `backend` is "auto", "torch", "cpu", "cuda" or "triton".
    """
    y = _fused.try_fast("linear_fast", x, weight, bias, activation, negative_slope, backend=backend)
    if y is not None:
        return y
    args = (x, weight, bias, activation, negative_slope)
    composite = _fused.stock_call((x, weight, bias), reference.linear, *args)
    act = A.activation_id(activation)
    slope = A.check_negative_slope(negative_slope)
    x, weight, bias = _fused.autocast(x, weight, bias)
    _checks.check_floating("linear", input=x, weight=weight, bias=bias)
    # a negative view's memory holds its values un-negated (the kernels read memory)
    x, weight, bias = (t if t is None else t.resolve_neg() for t in (x, weight, bias))
    if x.dim() == 0:
        raise RuntimeError(
            f"both arguments to linear need to be at least 1D, but they are 0D and {weight.dim()}D"
        )
    if weight.dim() not in (1, 2):
        raise RuntimeError(
            f"Expected 2D weight for linear, but got weight of size: {list(weight.shape)}"
        )
    if weight.dim() == 1 or (bias is not None and bias.shape != weight.shape[:1]):
        return _broadcast_forms(x, weight, bias, activation, negative_slope, backend)
    out_features, in_features = weight.shape
    rows = math.prod(x.shape[:-1])
    if x.shape[-1] != in_features:
        raise RuntimeError(
            f"mat1 and mat2 shapes cannot be multiplied ({rows}x{x.shape[-1]} and "
            f"{in_features}x{out_features})"
        )
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != out_features):
        raise RuntimeError(
            f"Given weight of size {list(weight.shape)}, expected bias to be 1-dimensional with "
            f"{out_features} elements, but got bias of size {list(bias.shape)} instead"
        )
    x2 = x if x.dim() == 2 else x.reshape(rows, in_features)
    name = backends.resolve("linear", backend, x2)
    if composite is not None:  # (after genkern's checks: the same errors inside a transform)
        return composite()
    if name == "cpu" and rows and out_features and _fused.fast_eager(x, weight, bias):
        y = _registry.extension().linear_act_eager_cpu(x2, weight, bias, act, slope)
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], out_features)
    save_preact = _fused.wants_preact(act, slope, x, weight, bias)
    args = (x2, weight, bias, act, slope, save_preact, name)
    if not _fused.eager():
        y = torch.ops.genkern.linear_act(*args)[0]
    elif torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias)
    ):
        y = _LinearAct.apply(*args)
    else:
        y = _forward(*args)[0]
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], out_features)


# ---- the custom ops --------------------------------------------------------------------------


# Small layers (the dense layers of a VAE: tens of microseconds) would pay as much again for the
# custom op's dispatch, so plain eager calls skip it: on the CPU backend through the C++ fast path
# (csrc/cpu/eager_autograd.h), elsewhere by running the same bodies (_forward, _backward_grads)
# through _LinearAct; torch.compile and dispatch modes see the custom ops.


def _broadcast_forms(x, weight, bias, activation, negative_slope, backend):
    """F.linear's other forms: a 1-D weight (x @ weight, the last dim dropped) and a bias that
    broadcasts to the output without being [out_features] (a [1], 0-dim or full-size bias, as
    addmm takes it): genkern's product without bias, then stock's add and the activation."""
    if weight.dim() == 1 and bias is not None:
        raise RuntimeError("mat2 must be a matrix, got 1-D tensor")  # torch's addmm
    y = linear(x, weight.unsqueeze(0) if weight.dim() == 1 else weight, backend=backend)
    if weight.dim() == 1:
        y = y.squeeze(-1)
    if bias is not None:
        fits = bias.dim() <= y.dim() and all(
            b in (1, o) for b, o in zip(reversed(bias.shape), reversed(y.shape), strict=False)
        )
        if not fits:
            raise RuntimeError(
                f"The expanded size of the bias {list(bias.shape)} must match the output size "
                f"{list(y.shape)} of linear"
            )
        y = y + bias
    return reference.activation(y, activation, A.check_negative_slope(negative_slope))


def _forward(x, weight, bias, activation, negative_slope, save_preact, backend):
    """The custom op's body: (y, the pre-activation or an empty tensor)."""
    if x.shape[0] == 0 or weight.shape[0] == 0:
        return x.new_empty(x.shape[0], weight.shape[0]), x.new_empty(0)
    fwd = _registry.kernel("linear_act_forward", backend)
    y, preact = fwd(x, weight, bias, activation, negative_slope, save_preact)
    preact = _fused.owned(preact.contiguous()) if save_preact else x.new_empty(0)
    return _fused.owned(y.contiguous()), preact


@torch.library.custom_op("genkern::linear_act", mutates_args=())
def _linear_act(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: int,
    negative_slope: float,
    save_preact: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _forward(x, weight, bias, activation, negative_slope, save_preact, backend)


@_linear_act.register_fake
def _(x, weight, bias, activation, negative_slope, save_preact, backend):
    shape = (x.shape[0], weight.shape[0])
    keep = save_preact and x.shape[0] and weight.shape[0]
    return x.new_empty(shape), x.new_empty(shape) if keep else x.new_empty(0)


def _backward_grads(grad_y, saved, x, weight, activation, negative_slope, output_mask, backend):
    """The backward custom op's body: (grad_x, grad_weight, grad_bias), empty where unmasked."""
    if x.shape[0] == 0 or weight.shape[0] == 0:
        gx, gw = torch.zeros_like(x), torch.zeros_like(weight)
        gb = weight.new_zeros(weight.shape[0])
    else:
        bwd = _registry.kernel("linear_act_backward", backend)
        gx, gw, gb = bwd(grad_y, saved, x, weight, activation, negative_slope, output_mask)
    return _fused.grads_out(x, weight, output_mask, gx, gw, gb)


@torch.library.custom_op("genkern::linear_act_backward", mutates_args=())
def _linear_act_backward(
    grad_y: torch.Tensor,
    saved: torch.Tensor | None,
    x: torch.Tensor,
    weight: torch.Tensor,
    activation: int,
    negative_slope: float,
    output_mask: list[bool],
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward_grads(
        grad_y, saved, x, weight, activation, negative_slope, output_mask, backend
    )


@_linear_act_backward.register_fake
def _(grad_y, saved, x, weight, activation, negative_slope, output_mask, backend):
    return _fused.fake_grads(x, weight, weight.shape[0], output_mask)


def _setup_context(ctx, inputs, output):
    x, weight, bias, act, slope, _, backend = inputs
    y, preact = output
    # preact is internal: no gradient, and none made of zeros for the backward to ignore
    ctx.mark_non_differentiable(preact)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, weight, _fused.saved_for_backward(act, slope, y, preact))
    _fused.hold_bias(ctx, bias)
    ctx.args = (act, slope)
    ctx.backend = backend


def _backward(ctx, grad_y, _grad_preact=None, backward=torch.ops.genkern.linear_act_backward):
    return _fused.backward_grads(ctx, grad_y, _forward_torch, backward, 7)


_linear_act.register_autograd(_backward, setup_context=_setup_context)


class _LinearAct(torch.autograd.Function):
    """The eager path: the custom op's forward and backward bodies without its dispatch."""

    @staticmethod
    def forward(ctx, *args):
        out = _forward(*args)
        _setup_context(ctx, args, out)
        return out[0]

    @staticmethod
    def backward(ctx, grad_y):
        return _backward(ctx, grad_y, backward=_backward_grads)


# ---- backends ---------------------------------------------------------------------------------


def _forward_torch(x, weight, bias, act, slope, save_preact):
    z = F.linear(x, weight, bias)
    y = reference.activation(z, A.ID_TO_NAME[act], slope)
    return y, z if save_preact else None


def _backward_torch(grad_y, saved, x, weight, act, slope, mask):
    g = reference.activation_backward(grad_y, saved, act, slope)
    gx = g.mm(weight) if mask[0] else None
    gw = g.t().mm(x) if mask[1] else None
    gb = g.sum(0) if mask[2] else None
    return gx, gw, gb


_registry.register(
    "linear_act_forward",
    torch=_forward_torch,
    cpu="ext:linear_act_forward_cpu",
    cuda="ext:linear_act_forward_cuda",
    triton="genkern.triton.linear:linear_act_forward_triton",
)
_registry.register(
    "linear_act_backward",
    torch=_backward_torch,
    cpu="ext:linear_act_backward_cpu",
    cuda="ext:linear_act_backward_cuda",
    triton="genkern.triton.linear:linear_act_backward_triton",
)
