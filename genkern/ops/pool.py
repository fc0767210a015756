"""genkern.ops.max_pool2d / avg_pool2d / upsample_nearest2d: one custom op each (forward and
backward) on every backend, with torch's index rules, tie / NaN behaviour and divisors. Plain
eager calls on the cpu backend run the same kernels through C++ entries and autograd Functions
(csrc/cpu/fast_entry.h, eager_autograd.h) instead of the custom ops' Python dispatch."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from genkern import activations as A
from genkern import backends, reference
from genkern.ops import _checks, _fused, _registry
from genkern.ops.batch_norm import _require_backend


def _not_floating(x) -> bool:
    """An integer, bool or complex tensor: the pools and upsampling run stock's op, which takes
    integer images (max pool: every integer dtype; upsampling: uint8; average pool: int64)
    and raises its own error for the rest; there is no gradient to fuse."""
    return isinstance(x, torch.Tensor) and not x.is_floating_point()


def _pool_args(op, x, kernel_size, stride, padding, dilation):
    _checks.check_floating(op, input=x)
    if x.dim() not in (3, 4) or 0 in x.shape[x.dim() - 3 :]:  # a batch (4-D) may be empty
        raise RuntimeError(
            "non-empty 3D or 4D (batch mode) tensor expected for input, but got input of size: "
            f"{list(x.shape)}"
        )
    kernel = _checks.pair(kernel_size, "kernel_size")
    stride = (
        kernel
        if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0)
        else _checks.pair(stride, "stride")
    )
    padding = _checks.pair(padding, "padding")
    dilation = _checks.pair(dilation, "dilation")
    if 0 in stride:
        raise RuntimeError("stride should not be zero")
    if min(stride) < 0:
        raise RuntimeError(
            f"stride should be greater than zero, but got dH: {stride[0]} dW: {stride[1]}"
        )
    if min(kernel) <= 0:
        raise RuntimeError(
            f"kernel size should be greater than zero, but got kH: {kernel[0]} kW: {kernel[1]}"
        )
    if min(dilation) <= 0:
        raise RuntimeError(
            "dilation should be greater than zero, but got dilationH: "
            f"{dilation[0]} dilationW: {dilation[1]}"
        )
    if min(padding) < 0:
        raise RuntimeError(
            f"pad must be non-negative, but got pad: {padding[0] if padding[0] < 0 else padding[1]}"
        )
    for k, p, d in zip(kernel, padding, dilation, strict=True):
        if p > ((k - 1) * d + 1) // 2:
            raise RuntimeError(
                "pad should be at most half of effective kernel size, but got "
                f"pad={p}, kernel_size={k} and dilation={d}"
            )
    return kernel, stride, padding, dilation


def _out_size(size, k, s, p, d, ceil_mode):
    """ATen's pooling_output_shape."""
    num = size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)
    out = num // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _output_hw(x, kernel, stride, padding, dilation, ceil_mode):
    hw = [
        _out_size(x.shape[2 + i], kernel[i], stride[i], padding[i], dilation[i], ceil_mode)
        for i in range(2)
    ]
    if hw[0] < 1 or hw[1] < 1:
        c, h, w = x.shape[1:]
        raise RuntimeError(
            f"Given input size: ({c}x{h}x{w}). Calculated output size: "
            f"({c}x{hw[0]}x{hw[1]}). Output size is too small"
        )
    return hw


def max_pool2d(
    x: torch.Tensor,
    kernel_size,
    stride=None,
    padding=0,
    dilation=1,
    ceil_mode: bool = False,
    return_indices: bool = False,
    activation: str | None = None,
    negative_slope: float = 0.01,
    backend: str = "auto",
):
    """act(F.max_pool2d(x, ...)): gradients go to the first maximum of each window; NaN counts as
    maximum. The activation (as conv2d's) runs on the pooled output, a quarter of the input for a
    2x2 pool; genkern.nn.convert moves a conv's ReLU onto the max pool after it (the same values:
    relu commutes with max), so the conv's full-size output is not kept for the backward.

    With return_indices, also returns the int64 flat indices into each H*W plane (like torch).
    A window wholly in the padding (possible with dilation) gives -inf, index -1 and no
    gradient (stock torch gives an index past the plane there, and its backward then writes
    out of bounds).
    """
    y = _fused.try_fast(
        "max_pool2d_fast",
        x,
        kernel_size,
        stride,
        padding,
        dilation,
        ceil_mode,
        return_indices,
        activation,
        negative_slope,
        backend=backend,
    )
    if y is not None:
        return y
    args = (kernel_size, stride, padding, dilation, ceil_mode, return_indices, activation)
    composite = _fused.stock_call((x,), _max_pool2d_stock, x, *args, negative_slope)
    if _not_floating(x):
        y = F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices)
        if activation is None:
            return y
        name, slope = A.ID_TO_NAME[A.activation_id(activation)], float(negative_slope)
        if return_indices:
            return reference.activation(y[0], name, slope), y[1]
        return reference.activation(y, name, slope)
    kernel, stride, padding, dilation = _pool_args(
        "max_pool2d", x, kernel_size, stride, padding, dilation
    )
    act = A.activation_id(activation)
    slope = A.check_negative_slope(negative_slope)
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    _output_hw(x, kernel, stride, padding, dilation, ceil_mode)
    name = backends.resolve("max_pool2d", backend, x)
    _require_backend("max_pool2d", "max_pool2d_forward", name)
    if composite is not None:  # (after genkern's checks: the same errors inside a transform)
        return composite()
    save_preact = _fused.wants_preact(act, slope, x)
    args = (x, kernel, stride, padding, dilation, bool(ceil_mode), act, slope, save_preact, name)
    op = _max_pool2d_body if _no_graph(x) else torch.ops.genkern.max_pool2d
    y, idx, _ = op(*args)
    if unbatched:
        y, idx = y.squeeze(0), idx.squeeze(0)
    return (y, idx) if return_indices else y


def avg_pool2d(
    x: torch.Tensor,
    kernel_size,
    stride=None,
    padding=0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """F.avg_pool2d, with ceil_mode, count_include_pad and divisor_override exactly as torch."""
    y = _fused.try_fast(
        "avg_pool2d_fast",
        x,
        kernel_size,
        stride,
        padding,
        ceil_mode,
        count_include_pad,
        divisor_override,
        backend=backend,
    )
    if y is not None:
        return y
    args = (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    composite = _fused.stock_call((x,), reference.avg_pool2d, x, *args)
    if _not_floating(x):
        return F.avg_pool2d(
            x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
        )
    kernel, stride, padding, _ = _pool_args("avg_pool2d", x, kernel_size, stride, padding, 1)
    if divisor_override is not None:
        if _checks.as_int(divisor_override) is None:
            raise TypeError("divisor_override must be an int or None")
        if divisor_override == 0:
            raise RuntimeError("divisor must be not zero")
    div = 0 if divisor_override is None else int(divisor_override)
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    _output_hw(x, kernel, stride, padding, [1, 1], ceil_mode)
    name = backends.resolve("avg_pool2d", backend, x)
    _require_backend("avg_pool2d", "avg_pool2d_forward", name)
    if composite is not None:  # (after genkern's checks: the same errors inside a transform)
        return composite()
    args = (x, kernel, stride, padding, bool(ceil_mode), bool(count_include_pad), div, name)
    y = _avg_pool2d_body(*args) if _no_graph(x) else torch.ops.genkern.avg_pool2d(*args)
    return y.squeeze(0) if unbatched else y


def upsample_nearest2d(
    x: torch.Tensor, scale_factor=None, size=None, backend: str = "auto"
) -> torch.Tensor:
    """F.interpolate(x, size, scale_factor, mode="nearest"), the same source index per pixel."""
    composite = _fused.stock_call((x,), reference.upsample_nearest2d, x, scale_factor, size)
    if _not_floating(x):
        return F.interpolate(x, size=size, scale_factor=scale_factor, mode="nearest")
    _checks.check_floating("upsample_nearest2d", input=x)
    if x.dim() != 4:
        raise ValueError(
            f"Input Error: Only 4D input Tensors are supported for nearest 2D "
            f"upsampling (got {x.dim()}D)"
        )
    if size is not None and scale_factor is not None:
        raise ValueError("only one of size or scale_factor should be defined")
    if size is None and scale_factor is None:
        raise ValueError("either size or scale_factor should be defined")
    if size is not None:
        if isinstance(size, (tuple, list)) and len(size) != 2:
            raise ValueError(
                "Input and output must have the same number of spatial dimensions, but got "
                f"input with spatial dimensions of {list(x.shape[2:])} and output size of {size}. "
                "Please provide input tensor in (N, C, d1, d2, ...,dK) format and output size in "
                "(o1, o2, ...,oK) format."
            )
        out = _checks.pair(list(size) if isinstance(size, tuple) else size, "size")
        scales = [0.0, 0.0]
    else:
        sf = scale_factor if isinstance(scale_factor, (tuple, list)) else (scale_factor,) * 2
        if len(sf) != 2:
            raise ValueError(
                "Input and scale_factor must have the same number of spatial "
                f"dimensions, but got input with spatial dimensions of "
                f"{list(x.shape[2:])} and scale_factor of shape {list(sf)}."
            )
        scales = [float(s) for s in sf]
        out = [math.floor(x.shape[2 + i] * scales[i]) for i in range(2)]
    if x.shape[1] == 0:  # torch's words (before its size check)
        raise RuntimeError(
            f"Non-empty 4D data tensor expected but got a tensor with sizes {list(x.shape)}"
        )
    if any(o <= 0 for o in out) or any(s == 0 for s in x.shape[2:]):
        raise RuntimeError(
            f"Input and output sizes should be greater than 0, but got input "
            f"(H: {x.shape[2]}, W: {x.shape[3]}) output (H: {out[0]}, "
            f"W: {out[1]})"
        )
    if size is None and _fused.jit_tracing():
        # torch.jit.trace would record genkern's op with the traced input's output size and
        # index tables as constants (found by a fuzz: another input size got the traced one's
        # output); stock's interpolate is recorded with the scale: the same values
        return F.interpolate(x, scale_factor=tuple(scales), mode="nearest")
    name = backends.resolve("upsample_nearest2d", backend, x)
    _require_backend("upsample_nearest2d", "upsample_nearest2d_forward", name)
    if composite is not None:  # (after genkern's checks: the same errors inside a transform)
        return composite()
    if name == "cpu" and x.numel() and _fused.fast_eager(x):  # C++ kernels and autograd
        sh, sw = _tables(x.shape[2:], out, scales[0], scales[1], x.device)
        return _ext().upsample_nearest2d_eager_cpu(x, sh, sw, _format(x) == torch.channels_last)
    args = (x, out, scales[0], scales[1], name)
    return _upsample_body(*args) if _no_graph(x) else torch.ops.genkern.upsample_nearest2d(*args)


def nearest_source_index(out_size: int, in_size: int, scale: float, device) -> torch.Tensor:
    """ATen's nearest_idx for every output index (float32 arithmetic, as its kernels; stock's
    float64 forward over outputs wider than ~52 pixels computes it in double, and may pick the
    neighbouring row at a non-integer scale: found by a fuzz, left as the backward's rule)."""
    if out_size == in_size:
        return torch.arange(out_size, device=device)
    if out_size == 2 * in_size:
        return torch.arange(out_size, device=device) // 2
    if scale > 0:
        s = torch.tensor(1.0 / scale, dtype=torch.float32)
    else:
        s = torch.tensor(float(in_size), dtype=torch.float32) / out_size
    idx = torch.floor(torch.arange(out_size, dtype=torch.float32) * s).long()
    return idx.clamp_(max=in_size - 1).to(device)


def _format(x):
    return _checks.dense_format(x)


def _dense(x):
    return x.contiguous(memory_format=_format(x))


def _zeros(input_size, channels_last, like):
    return _empty(input_size, channels_last, like).zero_()  # no NCHW zeros copied to NHWC


def _empty(input_size, channels_last, like):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(input_size, dtype=like.dtype, device=like.device, memory_format=fmt)


# ---- max_pool2d ---------------------------------------------------------------------------------


def _max_pool2d_stock(x, kernel, stride, padding, dilation, ceil_mode, with_indices, act, slope):
    """act(F.max_pool2d(x)): max_pool2d's stock composite (see _fused.stock_composite)."""
    y = F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode, with_indices)
    y, idx = y if with_indices else (y, None)
    y = reference.activation(y, act, slope)
    return (y, idx) if with_indices else y


def _no_graph(x: torch.Tensor) -> bool:
    """A plain eager call that records no autograd graph runs the custom op's body directly,
    without its dispatch (tens of microseconds: a batch-1 layer's whole cost)."""
    return not (torch.is_grad_enabled() and x.requires_grad) and _fused.fast_eager(x)


@torch.library.custom_op("genkern::max_pool2d", mutates_args=())
def _max_pool2d(
    x: torch.Tensor,
    kernel: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    ceil_mode: bool,
    activation: int,
    negative_slope: float,
    save_preact: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _max_pool2d_body(
        x, kernel, stride, padding, dilation, ceil_mode, activation, negative_slope, save_preact,
        backend,
    )  # fmt: skip


def _max_pool2d_body(x, kernel, stride, padding, dilation, ceil_mode, act, slope, save_preact,
                     backend):  # fmt: skip
    """(act(y), indices, y if save_preact else an empty tensor) for y the max pool of x."""
    hw = _output_hw(x, kernel, stride, padding, dilation, ceil_mode)
    fmt = _format(x)
    if x.numel() == 0:
        y = x.new_empty([*x.shape[:2], *hw]).contiguous(memory_format=fmt)
        preact = torch.empty_like(y) if save_preact else x.new_empty(0)
        return y, torch.empty_like(y, dtype=torch.int64), preact
    y, idx, preact = _registry.kernel("max_pool2d_forward", backend)(
        _dense(x), kernel, stride, padding, dilation, ceil_mode, hw, act, slope, save_preact
    )
    preact = preact.contiguous(memory_format=fmt) if save_preact else x.new_empty(0)
    return y.contiguous(memory_format=fmt), idx.contiguous(memory_format=fmt), preact


@_max_pool2d.register_fake
def _(x, kernel, stride, padding, dilation, ceil_mode, act, slope, save_preact, backend):
    hw = _output_hw(x, kernel, stride, padding, dilation, ceil_mode)
    y = x.new_empty([*x.shape[:2], *hw]).contiguous(memory_format=_format(x))
    return (
        y,
        torch.empty_like(y, dtype=torch.int64),
        torch.empty_like(y) if save_preact else x.new_empty(0),
    )


@torch.library.custom_op("genkern::max_pool2d_backward", mutates_args=())
def _max_pool2d_backward(
    grad_y: torch.Tensor,
    saved: torch.Tensor | None,
    indices: torch.Tensor,
    input_size: list[int],
    channels_last: bool,
    kernel: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    activation: int,
    negative_slope: float,
    backend: str,
) -> torch.Tensor:
    if 0 in input_size or grad_y.numel() == 0:
        return _zeros(input_size, channels_last, grad_y)
    gx = _empty(input_size, channels_last, grad_y)  # every backend's kernel writes all of it
    return _registry.kernel("max_pool2d_backward", backend)(
        grad_y, saved, indices, gx, kernel, stride, padding, dilation, activation, negative_slope
    )


@_max_pool2d_backward.register_fake
def _(grad_y, saved, indices, input_size, channels_last, kernel, stride, padding, dilation, act,
      slope, backend):  # fmt: skip
    return _empty(input_size, channels_last, grad_y)


def _max_setup(ctx, inputs, output):
    x, kernel, stride, padding, dilation, ceil_mode, act, slope, save_preact, backend = inputs
    y, idx, preact = output
    # the indices and the kept pre-activation: no gradients, and none made of zeros for the
    # backward to ignore (the engine zero-filled int64 indices per backward: 0.8 ms of a CNN step)
    ctx.mark_non_differentiable(idx, preact)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(_fused.saved_for_backward(act, slope, y, preact), idx)
    ctx.input_edge = _fused.kept_edge(x) if act == A.SILU else None  # (see _max_backward)
    ctx.args = (
        list(x.shape),
        _format(x) == torch.channels_last,
        kernel,
        stride,
        padding,
        dilation,
        act,
        slope,
        backend,
    )


def _max_backward(ctx, grad_y, _grad_idx, _grad_preact):
    if grad_y is None:  # no gradient reached the output (grads are not materialized as zeros)
        return (None,) * 10
    saved, idx = ctx.saved_tensors
    if _fused.stock_backward(grad_y):
        input_size, cl, *_, act, slope, _ = ctx.args
        if act == A.SILU:
            # silu's backward reads its input, the pooled x, kept as a value: in x's graph as
            # that value plus the pool of a zero at x's edge, so its second derivative reaches x
            zero = _empty(input_size, cl, saved).zero_()
            saved = saved + _at_maxima(_fused.at_edge(zero, ctx.input_edge), idx)
        g = reference.activation_backward(grad_y, saved, act, slope)
        gx = _fused.linear_map_grad(lambda x: _at_maxima(x, idx), input_size, cl, g)
    else:
        gx = torch.ops.genkern.max_pool2d_backward(grad_y, saved, idx, *ctx.args)
    return gx, *([None] * 9)


def _at_maxima(x, indices):
    """x at each window's recorded maximum (flat indices into a plane; -1, a window wholly in the
    padding, gives 0): given the indices, max pooling is this linear map, whose vector-Jacobian
    product is the pool's backward (for a second derivative, see _fused.linear_map_grad)."""
    n, c = indices.shape[:2]
    flat = indices.reshape(n, c, -1)
    at = x.reshape(n, c, -1).gather(2, flat.clamp_min(0)).masked_fill(flat < 0, 0)
    return at.view(indices.shape)


_max_pool2d.register_autograd(_max_backward, setup_context=_max_setup)


# ---- avg_pool2d ---------------------------------------------------------------------------------


@torch.library.custom_op("genkern::avg_pool2d", mutates_args=())
def _avg_pool2d(
    x: torch.Tensor,
    kernel: list[int],
    stride: list[int],
    padding: list[int],
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int,
    backend: str,
) -> torch.Tensor:
    return _avg_pool2d_body(
        x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override, backend
    )


def _avg_pool2d_body(
    x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override, backend
):
    hw = _output_hw(x, kernel, stride, padding, [1, 1], ceil_mode)
    fmt = _format(x)
    if x.numel() == 0:
        return x.new_empty([*x.shape[:2], *hw]).contiguous(memory_format=fmt)
    y = _registry.kernel("avg_pool2d_forward", backend)(
        _dense(x), kernel, stride, padding, hw, ceil_mode, count_include_pad, divisor_override
    )
    return y.contiguous(memory_format=fmt)


@_avg_pool2d.register_fake
def _(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override, backend):
    hw = _output_hw(x, kernel, stride, padding, [1, 1], ceil_mode)
    return x.new_empty([*x.shape[:2], *hw]).contiguous(memory_format=_format(x))


@torch.library.custom_op("genkern::avg_pool2d_backward", mutates_args=())
def _avg_pool2d_backward(
    grad_y: torch.Tensor,
    input_size: list[int],
    channels_last: bool,
    kernel: list[int],
    stride: list[int],
    padding: list[int],
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int,
    backend: str,
) -> torch.Tensor:
    if grad_y.numel() == 0:
        return _zeros(input_size, channels_last, grad_y)
    return _registry.kernel("avg_pool2d_backward", backend)(
        grad_y,
        input_size,
        channels_last,
        kernel,
        stride,
        padding,
        ceil_mode,
        count_include_pad,
        divisor_override,
    )


@_avg_pool2d_backward.register_fake
def _(
    grad_y,
    input_size,
    channels_last,
    kernel,
    stride,
    padding,
    ceil_mode,
    count_include_pad,
    divisor_override,
    backend,
):
    return _empty(input_size, channels_last, grad_y)


def _avg_setup(ctx, inputs, output):
    x, kernel, stride, padding, ceil_mode, cip, div, backend = inputs
    ctx.args = (
        list(x.shape),
        _format(x) == torch.channels_last,
        kernel,
        stride,
        padding,
        ceil_mode,
        cip,
        div,
        backend,
    )


def _avg_backward(ctx, grad_y):
    if _fused.stock_backward(grad_y):
        input_size, cl, kernel, stride, padding, ceil_mode, cip, div, _ = ctx.args
        window = (kernel, stride, padding, None, ceil_mode, cip, div)
        gx = _fused.linear_map_grad(lambda x: _avg_fwd_torch(x, *window), input_size, cl, grad_y)
    else:
        gx = torch.ops.genkern.avg_pool2d_backward(grad_y, *ctx.args)
    return gx, None, None, None, None, None, None, None


_avg_pool2d.register_autograd(_avg_backward, setup_context=_avg_setup)


# ---- upsample_nearest2d -------------------------------------------------------------------------


@torch.library.custom_op("genkern::upsample_nearest2d", mutates_args=())
def _upsample_nearest2d(
    x: torch.Tensor, output_size: list[int], scale_h: float, scale_w: float, backend: str
) -> torch.Tensor:
    return _upsample_body(x, output_size, scale_h, scale_w, backend)


def _upsample_body(x, output_size, scale_h, scale_w, backend):
    fmt = _format(x)
    if x.numel() == 0:
        return x.new_empty([*x.shape[:2], *output_size]).contiguous(memory_format=fmt)
    y = _registry.kernel("upsample_nearest2d_forward", backend)(
        _dense(x), output_size, scale_h, scale_w
    )
    return y.contiguous(memory_format=fmt)


@_upsample_nearest2d.register_fake
def _(x, output_size, scale_h, scale_w, backend):
    return x.new_empty([*x.shape[:2], *output_size]).contiguous(memory_format=_format(x))


@torch.library.custom_op("genkern::upsample_nearest2d_backward", mutates_args=())
def _upsample_nearest2d_backward(
    grad_y: torch.Tensor,
    input_size: list[int],
    channels_last: bool,
    scale_h: float,
    scale_w: float,
    backend: str,
) -> torch.Tensor:
    if grad_y.numel() == 0:
        return _zeros(input_size, channels_last, grad_y)
    return _registry.kernel("upsample_nearest2d_backward", backend)(
        grad_y, input_size, channels_last, scale_h, scale_w
    )


@_upsample_nearest2d_backward.register_fake
def _(grad_y, input_size, channels_last, scale_h, scale_w, backend):
    return _empty(input_size, channels_last, grad_y)


def _up_setup(ctx, inputs, output):
    x, output_size, scale_h, scale_w, backend = inputs
    ctx.args = (list(x.shape), _format(x) == torch.channels_last, scale_h, scale_w, backend)


def _up_backward(ctx, grad_y):
    if _fused.stock_backward(grad_y):
        input_size, cl, scale_h, scale_w, _ = ctx.args
        size = list(grad_y.shape[2:])
        up = lambda x: _up_fwd_torch(x, size, scale_h, scale_w)
        gx = _fused.linear_map_grad(up, input_size, cl, grad_y)
    else:
        gx = torch.ops.genkern.upsample_nearest2d_backward(grad_y, *ctx.args)
    return gx, None, None, None, None


_upsample_nearest2d.register_autograd(_up_backward, setup_context=_up_setup)


# ---- backends -----------------------------------------------------------------------------------


def _opt(scale):
    return scale if scale > 0 else None


def _max_fwd_torch(x, kernel, stride, padding, dilation, ceil_mode, hw):
    y, idx = F.max_pool2d(
        x, kernel, stride, padding, dilation, ceil_mode=ceil_mode, return_indices=True
    )

    # A window wholly in the padding (possible with dilation) gets -inf and, from torch, the
    # index of an element outside the window (past the plane: its stock backward then writes out
    # of bounds): genkern's is -1.
    def has_tap(out, size, k, s, p, d):
        taps = torch.arange(out).mul_(s).sub_(p)[:, None] + torch.arange(k)[None, :] * d
        return ((taps >= 0) & (taps < size)).any(1)

    rows = has_tap(y.shape[2], x.shape[2], kernel[0], stride[0], padding[0], dilation[0])
    cols = has_tap(y.shape[3], x.shape[3], kernel[1], stride[1], padding[1], dilation[1])
    empty = ~(rows[:, None] & cols[None, :])
    if bool(empty.any()):
        idx = idx.masked_fill(empty.to(idx.device), -1)
    return y, idx


def _activation_after(pool_forward):
    """A backend's max-pool forward kernel followed by the activation, by torch's elementwise ops
    (the torch and CUDA backends; CPU and Triton fuse it into their own kernels)."""

    def forward(x, kernel, stride, padding, dilation, ceil_mode, hw, act, slope, save_preact):
        y, idx = pool_forward(x, kernel, stride, padding, dilation, ceil_mode, hw)
        return reference.activation(y, A.ID_TO_NAME[act], slope), idx, y if save_preact else None

    return forward


def _activation_before(pool_backward):
    """The activation's backward by torch's elementwise ops, then a max-pool backward kernel."""

    def backward(grad_y, saved, indices, gx, kernel, stride, padding, dilation, act, slope):
        g = reference.activation_backward(grad_y, saved, act, slope)
        return pool_backward(g, indices, gx, kernel, stride, padding, dilation)

    return backward


def _max_bwd_torch(grad_y, indices, gx, kernel, stride, padding, dilation):
    n, c = gx.shape[:2]
    flat = torch.zeros(n, c, gx.shape[2] * gx.shape[3], dtype=grad_y.dtype, device=grad_y.device)
    idx, g = indices.reshape(n, c, -1), grad_y.reshape(n, c, -1)
    flat.scatter_add_(2, idx.clamp_min(0), g.masked_fill(idx < 0, 0))  # -1: all-padding window
    return gx.copy_(flat.view(gx.shape))


def _avg_fwd_torch(x, kernel, stride, padding, hw, ceil_mode, cip, div):
    return F.avg_pool2d(x, kernel, stride, padding, ceil_mode, cip, div or None)


def _avg_bwd_torch(grad_y, input_size, cl, kernel, stride, padding, ceil_mode, cip, div):
    like = _empty(input_size, cl, grad_y)
    return torch.ops.aten.avg_pool2d_backward(
        grad_y, like, kernel, stride, padding, ceil_mode, cip, div or None
    )


def _up_fwd_torch(x, output_size, scale_h, scale_w):
    return torch.ops.aten.upsample_nearest2d(x, output_size, _opt(scale_h), _opt(scale_w))


def _up_bwd_torch(grad_y, input_size, cl, scale_h, scale_w):
    gx = torch.ops.aten.upsample_nearest2d_backward(
        grad_y, list(grad_y.shape[2:]), input_size, _opt(scale_h), _opt(scale_w)
    )
    return gx.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)


def _ext():
    return _registry.extension()


def _max_fwd_cpu(x, kernel, stride, padding, dilation, ceil_mode, hw, act, slope, save_preact):
    y, idx, preact = _ext().max_pool2d_forward_cpu(
        x, kernel, stride, padding, dilation, hw, act, slope, save_preact
    )
    return y, idx, preact if save_preact else None


def _max_bwd_cpu(grad_y, saved, indices, gx, kernel, stride, padding, dilation, act, slope):
    return _ext().max_pool2d_backward_cpu(
        grad_y, saved, indices, gx, kernel, stride, padding, dilation, act, slope
    )


def _avg_fwd_cpu(x, kernel, stride, padding, hw, ceil_mode, cip, div):
    return _ext().avg_pool2d_forward_cpu(x, kernel, stride, padding, hw, cip, div)


def _avg_bwd_cpu(grad_y, input_size, cl, kernel, stride, padding, ceil_mode, cip, div):
    gx = _empty(input_size, cl, grad_y)  # the kernel writes all of it
    return _ext().avg_pool2d_backward_cpu(grad_y, gx, kernel, stride, padding, cip, div)


def _tables(in_hw, out_hw, scale_h, scale_w, device):
    return (
        nearest_source_index(out_hw[0], in_hw[0], scale_h, device),
        nearest_source_index(out_hw[1], in_hw[1], scale_w, device),
    )


def _up_fwd_cpu(x, output_size, scale_h, scale_w):
    sh, sw = _tables(x.shape[2:], output_size, scale_h, scale_w, x.device)
    return _ext().upsample_nearest2d_forward_cpu(x, sh, sw)


def _up_bwd_cpu(grad_y, input_size, cl, scale_h, scale_w):
    sh, sw = _tables(input_size[2:], grad_y.shape[2:], scale_h, scale_w, grad_y.device)
    gx = _empty(input_size, cl, grad_y)  # the kernel writes all of it
    return _ext().upsample_nearest2d_backward_cpu(grad_y, sh, sw, gx)


_registry.register("max_pool2d_forward", torch=_activation_after(_max_fwd_torch), cpu=_max_fwd_cpu)
_registry.register(
    "max_pool2d_backward", torch=_activation_before(_max_bwd_torch), cpu=_max_bwd_cpu
)
_registry.register("avg_pool2d_forward", torch=_avg_fwd_torch, cpu=_avg_fwd_cpu)
_registry.register("avg_pool2d_backward", torch=_avg_bwd_torch, cpu=_avg_bwd_cpu)
_registry.register("upsample_nearest2d_forward", torch=_up_fwd_torch, cpu=_up_fwd_cpu)
_registry.register("upsample_nearest2d_backward", torch=_up_bwd_torch, cpu=_up_bwd_cpu)

_T = "genkern.triton.pool:"
_registry.register("max_pool2d_forward", triton=_T + "max_pool2d_forward_triton")
_registry.register("max_pool2d_backward", triton=_T + "max_pool2d_backward_triton")
_registry.register("avg_pool2d_forward", triton=_T + "avg_pool2d_forward_triton")
_registry.register("avg_pool2d_backward", triton=_T + "avg_pool2d_backward_triton")
_registry.register("upsample_nearest2d_forward", triton=_T + "upsample_nearest2d_forward_triton")
_registry.register("upsample_nearest2d_backward", triton=_T + "upsample_nearest2d_backward_triton")


# CUDA (csrc/cuda/norm_pool_kernels.cu): the backward kernels gather and write all of grad_x.
def _max_fwd_cuda(x, kernel, stride, padding, dilation, ceil_mode, hw):
    return _ext().max_pool2d_forward_cuda(x, kernel, stride, padding, dilation, hw)


def _max_bwd_cuda(grad_y, indices, gx, kernel, stride, padding, dilation):
    return _ext().max_pool2d_backward_cuda(grad_y, indices, gx, kernel, stride, padding, dilation)


def _avg_fwd_cuda(x, kernel, stride, padding, hw, ceil_mode, cip, div):
    return _ext().avg_pool2d_forward_cuda(x, kernel, stride, padding, hw, cip, div)


def _avg_bwd_cuda(grad_y, input_size, cl, kernel, stride, padding, ceil_mode, cip, div):
    gx = _empty(input_size, cl, grad_y)
    return _ext().avg_pool2d_backward_cuda(grad_y, gx, kernel, stride, padding, cip, div)


def _up_fwd_cuda(x, output_size, scale_h, scale_w):
    sh, sw = _tables(x.shape[2:], output_size, scale_h, scale_w, x.device)
    return _ext().upsample_nearest2d_forward_cuda(x, sh, sw)


def _up_bwd_cuda(grad_y, input_size, cl, scale_h, scale_w):
    sh, sw = _tables(input_size[2:], grad_y.shape[2:], scale_h, scale_w, grad_y.device)
    ranges = []
    for src, size in ((sh, input_size[2]), (sw, input_size[3])):
        ar = torch.arange(size, device=src.device)
        ranges += [torch.searchsorted(src, ar), torch.searchsorted(src, ar, right=True)]
    gx = _empty(input_size, cl, grad_y)
    return _ext().upsample_nearest2d_backward_cuda(grad_y, *ranges, gx)


_registry.register("max_pool2d_forward", cuda=_activation_after(_max_fwd_cuda))
_registry.register("max_pool2d_backward", cuda=_activation_before(_max_bwd_cuda))
_registry.register("avg_pool2d_forward", cuda=_avg_fwd_cuda)
_registry.register("avg_pool2d_backward", cuda=_avg_bwd_cuda)
_registry.register("upsample_nearest2d_forward", cuda=_up_fwd_cuda)
_registry.register("upsample_nearest2d_backward", cuda=_up_bwd_cuda)
