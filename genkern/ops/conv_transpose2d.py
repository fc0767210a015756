"""genkern.ops.conv_transpose2d: act(conv_transpose2d(x, weight) + bias), fused, one custom op on
every backend. Same structure as genkern.ops.conv2d."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genkern import activations as A
from genkern import backends, reference
from genkern.ops import _checks, _fused, _registry
from genkern.ops.conv2d import output_format


def conv_transpose2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride=1,
    padding=0,
    output_padding=0,
    groups: int = 1,
    dilation=1,
    activation: str | None = None,
    negative_slope: float = 0.01,
    backend: str = "auto",
) -> torch.Tensor:
    """act(F.conv_transpose2d(x, weight, bias, stride, padding, output_padding, groups, dilation))
    in one fused op (torch's argument order). `weight` is [C_in, C_out / groups, kH, kW].

    `activation` is None, "relu", "leaky_relu" (with `negative_slope`), "tanh", "sigmoid" or
    "silu"; `backend` is "auto", "torch", "cpu", "cuda" or "triton". Accepts batched (4-D) or
    unbatched (3-D) input, like torch.
    """
    y = _fused.try_fast(
        "conv_transpose2d_fast",
        x,
        weight,
        bias,
        stride,
        padding,
        output_padding,
        groups,
        dilation,
        activation,
        negative_slope,
        backend=backend,
    )
    if y is not None:
        return y
    args = (stride, padding, output_padding, groups, dilation, activation, negative_slope)
    composite = _fused.stock_call(
        (x, weight, bias), reference.conv_transpose2d, x, weight, bias, *args
    )
    act = A.activation_id(activation)
    slope = A.check_negative_slope(negative_slope)
    x, weight, bias = _fused.autocast(x, weight, bias)
    x, unbatched, stride, dilation, groups = _checks.conv_args(
        "conv_transpose2d", x, weight, bias, stride, dilation, groups
    )
    padding = _checks.pair(padding, "padding")
    output_padding = _checks.pair(output_padding, "output_padding")
    if min(padding) < 0:
        raise RuntimeError("negative padding is not supported")
    if min(output_padding) < 0:
        raise RuntimeError("negative output_padding is not supported")
    if any(output_padding[i] >= stride[i] and output_padding[i] >= dilation[i] for i in (0, 1)):
        raise RuntimeError(
            "output padding must be smaller than either stride or dilation, but got "
            f"output_padding_height: {output_padding[0]} output_padding_width: "
            f"{output_padding[1]} stride_height: {stride[0]} stride_width: {stride[1]} "
            f"dilation_height: {dilation[0]} dilation_width: {dilation[1]}"
        )
    _check_shapes(x, weight, bias, stride, padding, output_padding, dilation, groups)
    name = backends.resolve("conv_transpose2d", backend, x)
    if composite is not None:  # (after genkern's checks: the same errors inside a transform)
        return composite()
    if name == "cpu" and x.shape[0] and _fused.fast_eager(x, weight, bias):
        args = (x, weight, bias, stride, padding, output_padding, dilation, groups, act, slope)
        entry = _registry.extension().conv_transpose2d_act_eager_cpu
        y = entry(*args, output_format(x, weight) == torch.channels_last)
        return y.squeeze(0) if unbatched else y
    save_preact = _fused.wants_preact(act, slope, x, weight, bias)
    y, _ = torch.ops.genkern.conv_transpose2d_act(
        x,
        weight,
        bias,
        stride,
        padding,
        output_padding,
        dilation,
        groups,
        act,
        slope,
        save_preact,
        name,
    )
    return y.squeeze(0) if unbatched else y


def _check_shapes(x, weight, bias, stride, padding, output_padding, dilation, groups) -> None:
    in_channels = weight.shape[0]
    if in_channels % groups != 0:
        raise RuntimeError(
            f"Given groups={groups}, expected weight to be divisible by {groups} at dimension 0, "
            f"but got weight of size {list(weight.shape)} instead"
        )
    if x.shape[1] != in_channels:
        raise RuntimeError(
            f"Given transposed=1, weight of size {list(weight.shape)}, expected input"
            f"{list(x.shape)} to have {in_channels} channels, but got {x.shape[1]} channels "
            "instead"
        )
    out_channels = weight.shape[1] * groups
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != out_channels):
        raise RuntimeError(
            f"Given transposed=1, weight of size {list(weight.shape)}, expected bias to be "
            f"1-dimensional with {out_channels} elements, but got bias of size "
            f"{list(bias.shape)} instead"
        )
    out = output_shape(x, weight, stride, padding, output_padding, dilation, groups)[2:]
    if min(out) <= 0:
        raise RuntimeError(
            f"Given input size per channel: ({x.shape[2]} x {x.shape[3]}). Calculated output size "
            f"per channel: ({out[0]} x {out[1]}). Output size is too small"
        )


def output_shape(x, weight, stride, padding, output_padding, dilation, groups) -> list[int]:
    hw = [
        (x.shape[2 + i] - 1) * stride[i]
        - 2 * padding[i]
        + dilation[i] * (weight.shape[2 + i] - 1)
        + output_padding[i]
        + 1
        for i in range(2)
    ]
    return [x.shape[0], weight.shape[1] * groups, *hw]


# ---- the custom ops --------------------------------------------------------------------------


@torch.library.custom_op("genkern::conv_transpose2d_act", mutates_args=())
def _conv_transpose2d_act(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    output_padding: list[int],
    dilation: list[int],
    groups: int,
    activation: int,
    negative_slope: float,
    save_preact: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    fmt = output_format(x, weight)
    if x.shape[0] == 0:
        shape = output_shape(x, weight, stride, padding, output_padding, dilation, groups)
        return x.new_empty(shape).contiguous(memory_format=fmt), x.new_empty(0)
    fwd = _registry.kernel("conv_transpose2d_act_forward", backend)
    y, preact = fwd(
        x,
        weight,
        bias,
        stride,
        padding,
        output_padding,
        dilation,
        groups,
        activation,
        negative_slope,
        save_preact,
    )
    preact = _fused.owned(preact.contiguous(memory_format=fmt)) if save_preact else x.new_empty(0)
    return _fused.owned(y.contiguous(memory_format=fmt)), preact


@_conv_transpose2d_act.register_fake
def _(
    x,
    weight,
    bias,
    stride,
    padding,
    output_padding,
    dilation,
    groups,
    activation,
    negative_slope,
    save_preact,
    backend,
):
    fmt = output_format(x, weight)
    shape = output_shape(x, weight, stride, padding, output_padding, dilation, groups)
    y = x.new_empty(shape).contiguous(memory_format=fmt)
    keep = save_preact and shape[0]
    return y, x.new_empty(shape).contiguous(memory_format=fmt) if keep else x.new_empty(0)


@torch.library.custom_op("genkern::conv_transpose2d_act_backward", mutates_args=())
def _conv_transpose2d_act_backward(
    grad_y: torch.Tensor,
    saved: torch.Tensor | None,
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: list[int],
    padding: list[int],
    output_padding: list[int],
    dilation: list[int],
    groups: int,
    activation: int,
    negative_slope: float,
    output_mask: list[bool],
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if x.shape[0] == 0:
        gx, gw = torch.zeros_like(x), torch.zeros_like(weight)
        gb = weight.new_zeros(weight.shape[1] * groups)
    else:
        bwd = _registry.kernel("conv_transpose2d_act_backward", backend)
        gx, gw, gb = bwd(
            grad_y,
            saved,
            x,
            weight,
            stride,
            padding,
            output_padding,
            dilation,
            groups,
            activation,
            negative_slope,
            output_mask,
        )
    return _fused.grads_out(x, weight, output_mask, gx, gw, gb, output_format(x, weight))


@_conv_transpose2d_act_backward.register_fake
def _(
    grad_y,
    saved,
    x,
    weight,
    stride,
    padding,
    output_padding,
    dilation,
    groups,
    activation,
    negative_slope,
    output_mask,
    backend,
):
    fmt = output_format(x, weight)
    return _fused.fake_grads(x, weight, weight.shape[1] * groups, output_mask, fmt)


def _setup_context(ctx, inputs, output):
    x, weight, bias, stride, padding, output_padding, dilation, groups, act, slope, _, backend = (
        inputs
    )
    y, preact = output
    # preact is internal: no gradient, and none made of zeros for the backward to ignore
    ctx.mark_non_differentiable(preact)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, weight, _fused.saved_for_backward(act, slope, y, preact))
    _fused.hold_bias(ctx, bias)
    ctx.args = (stride, padding, output_padding, dilation, groups, act, slope)
    ctx.backend = backend


def _backward(ctx, grad_y, _grad_preact):
    backward = torch.ops.genkern.conv_transpose2d_act_backward
    return _fused.backward_grads(ctx, grad_y, _forward_torch, backward, 12)


_conv_transpose2d_act.register_autograd(_backward, setup_context=_setup_context)


# ---- backends ---------------------------------------------------------------------------------


def _forward_torch(
    x, weight, bias, stride, padding, output_padding, dilation, groups, act, slope, save_preact
):
    if _checks.runs_16bit_in_float32(x, weight, stride, padding, output_padding, dilation, True):
        z = F.conv_transpose2d(
            x.float(),
            weight.float(),
            None if bias is None else bias.float(),
            stride,
            padding,
            output_padding,
            groups,
            dilation,
        ).to(x.dtype)
    else:
        z = F.conv_transpose2d(x, weight, bias, stride, padding, output_padding, groups, dilation)
    y = reference.activation(z, A.ID_TO_NAME[act], slope)
    return y, z if save_preact else None


def _backward_torch(
    grad_y, saved, x, weight, stride, padding, output_padding, dilation, groups, act, slope, mask
):
    g = reference.activation_backward(grad_y, saved, act, slope)
    if _checks.runs_16bit_in_float32(x, weight, stride, padding, output_padding, dilation, True):
        grads = _backward_torch(
            g.float(), None, x.float(), weight.float(), stride, padding, output_padding,
            dilation, groups, A.activation_id(None), slope, mask,
        )  # fmt: skip
        return _checks.as_dtypes(grads, (x.dtype, weight.dtype, g.dtype))
    return torch.ops.aten.convolution_backward(
        g,
        x,
        weight,
        [weight.shape[1] * groups],
        stride,
        padding,
        dilation,
        True,
        output_padding,
        groups,
        mask,
    )


_registry.register(
    "conv_transpose2d_act_forward",
    torch=_forward_torch,
    cpu="ext:conv_transpose2d_act_forward_cpu",
    cuda="ext:conv_transpose2d_act_forward_cuda",
    triton="genkern.triton.conv_transpose2d:conv_transpose2d_act_forward_triton",
)
_registry.register(
    "conv_transpose2d_act_backward",
    torch=_backward_torch,
    cpu="ext:conv_transpose2d_act_backward_cpu",
    cuda="ext:conv_transpose2d_act_backward_cuda",
    triton="genkern.triton.conv_transpose2d:conv_transpose2d_act_backward_triton",
)
