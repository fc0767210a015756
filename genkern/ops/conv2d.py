"""genkern.ops.conv2d: act(conv2d(x, weight) + bias), fused, one custom op on every backend."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genkern import activations as A
from genkern import backends, reference
from genkern.ops import _checks, _fused, _registry


def conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    activation: str | None = None,
    negative_slope: float = 0.01,
    backend: str = "auto",
) -> torch.Tensor:
    """act(F.conv2d(x, weight, bias, stride, padding, dilation, groups)) in one fused op.

    `activation` is None, "relu", "leaky_relu" (with `negative_slope`), "tanh", "sigmoid" or
    "silu"; `padding` also takes "same"/"valid"; `backend` is "auto", "torch", "cpu", "cuda" or
    "triton". Accepts batched (4-D) or unbatched (3-D) input, like torch.
    """
    args = (x, weight, bias, stride, padding, dilation, groups, activation, negative_slope)
    y = _fused.try_fast("conv2d_fast", *args, backend=backend)
    if y is not None:
        return y
    composite = _fused.stock_call((x, weight, bias), reference.conv2d, *args)
    act = A.activation_id(activation)
    slope = A.check_negative_slope(negative_slope)
    x, weight, bias = _fused.autocast(x, weight, bias)
    x, unbatched, stride, dilation, groups = _checks.conv_args(
        "conv2d", x, weight, bias, stride, dilation, groups
    )
    padding, extra = _checks.conv_padding(padding, weight.shape[2:], stride, dilation)
    _check_conv_shapes(x, weight, bias, padding, extra, dilation, groups)
    if extra[0] or extra[1]:  # 'same', even kernel: torch pads the extra row/column at the end
        x = F.pad(x, [0, extra[1], 0, extra[0]])
    name = backends.resolve("conv2d", backend, x)
    if composite is not None:  # (after genkern's checks: the same errors inside a transform)
        return composite()
    if weight.shape[1] == 0:  # no input channels: act(bias), through stock's differentiable ops
        y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
        y = reference.activation(y, A.ID_TO_NAME[act], slope)
        return y.squeeze(0) if unbatched else y
    if name == "cpu" and x.shape[0] and _fused.fast_eager(x, weight, bias):
        args = (x, weight, bias, stride, padding, dilation, groups, act, slope)
        entry = _registry.extension().conv2d_act_eager_cpu
        y = entry(*args, output_format(x, weight) == torch.channels_last)
        return y.squeeze(0) if unbatched else y
    save_preact = _fused.wants_preact(act, slope, x, weight, bias)
    y, _ = torch.ops.genkern.conv2d_act(
        x, weight, bias, stride, padding, dilation, groups, act, slope, save_preact, name
    )
    return y.squeeze(0) if unbatched else y


def _check_conv_shapes(x, weight, bias, padding, extra, dilation, groups) -> None:
    out_channels, in_per_group = weight.shape[0], weight.shape[1]
    if out_channels % groups != 0:
        raise RuntimeError(
            f"Given groups={groups}, expected weight to be divisible by {groups} at dimension 0, "
            f"but got weight of size {list(weight.shape)} instead"
        )
    if x.shape[1] != in_per_group * groups:
        raise RuntimeError(
            f"Given groups={groups}, weight of size {list(weight.shape)}, expected "
            f"input{list(x.shape)} to have {in_per_group * groups} channels, but got "
            f"{x.shape[1]} channels instead"
        )
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != out_channels):
        raise RuntimeError(
            f"Given weight of size {list(weight.shape)}, expected bias to be 1-dimensional with "
            f"{out_channels} elements, but got bias of size {list(bias.shape)} instead"
        )
    padded = [x.shape[2 + i] + 2 * padding[i] + extra[i] for i in range(2)]
    kernel = [dilation[i] * (weight.shape[2 + i] - 1) + 1 for i in range(2)]
    if padded[0] < kernel[0] or padded[1] < kernel[1]:
        raise RuntimeError(
            f"Calculated padded input size per channel: ({padded[0]} x {padded[1]}). Kernel size: "
            f"({kernel[0]} x {kernel[1]}). Kernel size can't be greater than actual input size"
        )


def output_shape(x, weight, stride, padding, dilation) -> list[int]:
    hw = [
        (x.shape[2 + i] + 2 * padding[i] - dilation[i] * (weight.shape[2 + i] - 1) - 1) // stride[i]
        + 1
        for i in range(2)
    ]
    return [x.shape[0], weight.shape[0], *hw]


def output_format(x: torch.Tensor, weight: torch.Tensor) -> torch.memory_format:
    """channels_last when the input or the weight is (as ATen's conv engines decide)."""
    cl = torch.channels_last
    if _checks.dense_format(x) == cl or _checks.dense_format(weight) == cl:
        return cl
    return torch.contiguous_format


# ---- the custom ops --------------------------------------------------------------------------


@torch.library.custom_op("genkern::conv2d_act", mutates_args=())
def _conv2d_act(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    activation: int,
    negative_slope: float,
    save_preact: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    fmt = output_format(x, weight)
    if x.shape[0] == 0:
        y = x.new_empty(output_shape(x, weight, stride, padding, dilation))
        return y.contiguous(memory_format=fmt), x.new_empty(0)
    fwd = _registry.kernel("conv2d_act_forward", backend)
    y, preact = fwd(
        x, weight, bias, stride, padding, dilation, groups, activation, negative_slope, save_preact
    )
    preact = _fused.owned(preact.contiguous(memory_format=fmt)) if save_preact else x.new_empty(0)
    return _fused.owned(y.contiguous(memory_format=fmt)), preact


@_conv2d_act.register_fake
def _(
    x,
    weight,
    bias,
    stride,
    padding,
    dilation,
    groups,
    activation,
    negative_slope,
    save_preact,
    backend,
):
    fmt = output_format(x, weight)
    shape = output_shape(x, weight, stride, padding, dilation)
    y = x.new_empty(shape).contiguous(memory_format=fmt)
    preact = x.new_empty(shape).contiguous(memory_format=fmt) if save_preact and shape[0] else None
    return y, preact if preact is not None else x.new_empty(0)


@torch.library.custom_op("genkern::conv2d_act_backward", mutates_args=())
def _conv2d_act_backward(
    grad_y: torch.Tensor,
    saved: torch.Tensor | None,
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    activation: int,
    negative_slope: float,
    output_mask: list[bool],
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if x.shape[0] == 0:
        gx, gw, gb = (
            torch.zeros_like(x),
            torch.zeros_like(weight),
            weight.new_zeros(weight.shape[0]),
        )
    else:
        bwd = _registry.kernel("conv2d_act_backward", backend)
        gx, gw, gb = bwd(
            grad_y,
            saved,
            x,
            weight,
            stride,
            padding,
            dilation,
            groups,
            activation,
            negative_slope,
            output_mask,
        )
    return _fused.grads_out(x, weight, output_mask, gx, gw, gb, output_format(x, weight))


@_conv2d_act_backward.register_fake
def _(
    grad_y,
    saved,
    x,
    weight,
    stride,
    padding,
    dilation,
    groups,
    activation,
    negative_slope,
    output_mask,
    backend,
):
    return _fused.fake_grads(x, weight, weight.shape[0], output_mask, output_format(x, weight))


def _setup_context(ctx, inputs, output):
    x, weight, bias, stride, padding, dilation, groups, act, slope, save_preact, backend = inputs
    y, preact = output
    # preact is internal: no gradient, and none made of zeros for the backward to ignore
    ctx.mark_non_differentiable(preact)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, weight, _fused.saved_for_backward(act, slope, y, preact))
    _fused.hold_bias(ctx, bias)
    ctx.args = (stride, padding, dilation, groups, act, slope)
    ctx.backend = backend


def _backward(ctx, grad_y, _grad_preact):
    backward = torch.ops.genkern.conv2d_act_backward
    return _fused.backward_grads(ctx, grad_y, _forward_torch, backward, 11)


_conv2d_act.register_autograd(_backward, setup_context=_setup_context)


# ---- backends ---------------------------------------------------------------------------------


def _forward_torch(x, weight, bias, stride, padding, dilation, groups, act, slope, save_preact):
    if _checks.runs_16bit_in_float32(x, weight, stride, padding, [0, 0], dilation, False):
        b = None if bias is None else bias.float()
        z = F.conv2d(x.float(), weight.float(), b, stride, padding, dilation, groups).to(x.dtype)
    else:
        z = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    y = reference.activation(z, A.ID_TO_NAME[act], slope)
    return y, z if save_preact else None


def _backward_torch(grad_y, saved, x, weight, stride, padding, dilation, groups, act, slope, mask):
    g = reference.activation_backward(grad_y, saved, act, slope)
    if _checks.runs_16bit_in_float32(x, weight, stride, padding, [0, 0], dilation, False):
        grads = _backward_torch(
            g.float(), None, x.float(), weight.float(), stride, padding, dilation, groups,
            A.activation_id(None), slope, mask,
        )  # fmt: skip
        return _checks.as_dtypes(grads, (x.dtype, weight.dtype, g.dtype))
    gx, gw, gb = torch.ops.aten.convolution_backward(
        g, x, weight, [weight.shape[0]], stride, padding, dilation, False, [0, 0], groups, mask
    )
    return gx, gw, gb


_registry.register(
    "conv2d_act_forward",
    torch=_forward_torch,
    cpu="ext:conv2d_act_forward_cpu",
    cuda="ext:conv2d_act_forward_cuda",
    triton="genkern.triton.conv2d:conv2d_act_forward_triton",
)
_registry.register(
    "conv2d_act_backward",
    torch=_backward_torch,
    cpu="ext:conv2d_act_backward_cpu",
    cuda="ext:conv2d_act_backward_cuda",
    triton="genkern.triton.conv2d:conv2d_act_backward_triton",
)
