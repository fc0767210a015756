"""Argument normalization and validation at the op boundary, with torch's wording."""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch


def pair(value, name: str) -> list[int]:
    """An int or a sequence of 2 ints, as a list of 2 ints."""
    t = type(value)
    if t is int:  # the common cases first: this runs several times per layer call
        return [value, value]
    if (t is tuple or t is list) and len(value) == 2:
        a, b = value
        if type(a) is int and type(b) is int:
            return [a, b]
    i = as_int(value)
    if i is not None:
        return [i, i]
    if isinstance(value, Sequence) and len(value) in (1, 2):
        ints = [as_int(v) for v in value]
        if None not in ints:
            return ints if len(ints) == 2 else ints * 2
    raise TypeError(f"{name} must be an int or a tuple of 2 ints, but got {value!r}")


def as_int(value) -> int | None:
    """value as an int where it is an integer (int, a numpy integer, a 0-dim integer tensor: what
    torch's argument parser takes, through __index__), else None; bools are not."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


class NotFloatingError(TypeError, RuntimeError):
    """A tensor of an integer, bool or complex dtype where genkern's ops take floating point: a
    TypeError, and a RuntimeError as stock's layers raise for such inputs (code written for
    stock's `except RuntimeError` catches it too)."""


def check_floating(op: str, float32_params: bool = False, **tensors: torch.Tensor | None) -> None:
    """Every given tensor is a floating-point tensor of the first one's dtype and device. With
    float32_params (torch's mixed-precision rule for norm parameters), the tensors after a 16-bit
    first one may instead all be float32."""
    first_name, first = next(iter(tensors.items()))
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}(): argument '{name}' must be Tensor, not {type(t).__name__}")
        if not t.is_floating_point():
            raise NotFloatingError(
                f"{op}(): expected a floating-point tensor for '{name}', but got {t.dtype}"
            )
    dtype_name, dtype_of = first_name, first  # the tensor whose dtype the others must have
    params = [(n, t) for n, t in list(tensors.items())[1:] if t is not None]
    if (
        float32_params
        and first.dtype in (torch.bfloat16, torch.float16)
        and params
        and all(t.dtype == torch.float32 for _, t in params)
    ):
        dtype_name, dtype_of = params[0]
    for name, t in tensors.items():
        if t is None or t is first:
            continue
        if t.device != first.device:
            raise RuntimeError(
                "Expected all tensors to be on the same device, but found at least two devices, "
                f"{first.device} and {t.device}! ({op}: '{first_name}' and '{name}')"
            )
        if t.dtype != dtype_of.dtype:
            raise RuntimeError(
                f"{op}(): expected '{name}' to have the same dtype as '{dtype_name}' "
                f"({dtype_of.dtype}), but got {t.dtype}"
            )


def check_positive(values: list[int], message: str) -> None:
    if min(values) <= 0:
        raise RuntimeError(message)


def conv_args(op: str, x, weight, bias, stride, dilation, groups):
    """The checks and normalization every 2-D conv shares: floating tensors on one device and
    dtype, a 3-D (unbatched) or 4-D input and a 4-D weight, positive stride / dilation / groups.
    Returns (x as 4-D, whether it was unbatched, stride and dilation as lists of 2 ints, groups
    as an int)."""
    check_floating(op, input=x, weight=weight, bias=bias)
    if x.dim() not in (3, 4):
        raise RuntimeError(
            f"Expected 3D (unbatched) or 4D (batched) input to {op}, but got input of size: "
            f"{list(x.shape)}"
        )
    if weight.dim() != 4:
        raise RuntimeError(
            f"Expected 4D weight for {op}, but got weight of size: {list(weight.shape)}"
        )
    unbatched = x.dim() == 3
    stride = pair(stride, "stride")
    dilation = pair(dilation, "dilation")
    check_positive(stride, "non-positive stride is not supported")
    check_positive(dilation, "non-positive dilation is not supported")
    groups = as_int(groups)
    if groups is None or groups <= 0:
        raise RuntimeError("non-positive groups is not supported")
    if weight.shape[0] == 0:  # (found by a fuzz: the triton kernels ran it)
        raise RuntimeError(
            f"Given groups={groups}, expected weight to be at least 1 at dimension 0, but got "
            f"weight of size {list(weight.shape)} instead"
        )
    return (x.unsqueeze(0) if unbatched else x), unbatched, stride, dilation, groups


def conv_padding(padding, kernel: Sequence[int], stride: list[int], dilation: list[int]):
    """Normalizes conv padding; returns (symmetric padding, extra (right, bottom) padding).

    'same' with an even total padding splits it as torch does: the extra goes right/bottom.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return [0, 0], [0, 0]
        if padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError("padding='same' is not supported for strided convolutions")
            # int(k): a weight's size is a traced value under torch.jit.trace, a constant here
            total = [d * (int(k) - 1) for d, k in zip(dilation, kernel)]
            left = [t // 2 for t in total]
            return left, [t - 2 * lo for t, lo in zip(total, left)]
        raise ValueError(
            f"Invalid padding string: {padding!r}, should be one of {{'valid', 'same'}}"
        )
    pad = pair(padding, "padding")
    if min(pad) < 0:
        raise RuntimeError("negative padding is not supported")
    return pad, [0, 0]


def dense_format(t: torch.Tensor) -> torch.memory_format:
    """The memory format a dense result shaped like `t` takes: ATen's suggest_memory_format() rule
    (channels_last when the strides order the dims N, H, W, C, ambiguous size-1 cases included),
    so genkern's outputs take the layout ATen's conv and norm kernels pick and nothing is copied
    between the two."""
    if t.dim() != 4:
        return torch.contiguous_format
    sizes, strides = t.shape, t.stride()
    if strides[1] == 0:
        return torch.contiguous_format
    low = 0
    for d in (1, 3, 2, 0):
        if sizes[d] == 0 or strides[d] < low or (d == 0 and low == strides[1]):
            return torch.contiguous_format
        low = strides[d] * sizes[d] if sizes[d] > 1 else strides[d]
    return torch.channels_last


def as_dtypes(tensors, dtypes) -> tuple:
    """Each tensor cast to its dtype (None stays None): float32 detours' results, cast back."""
    return tuple(None if t is None else t.to(d) for t, d in zip(tensors, dtypes, strict=True))


def runs_16bit_in_float32(x, weight, stride, padding, output_padding, dilation, transposed) -> bool:
    """A 16-bit CPU conv or transposed conv with an output position no tap reaches (its window
    wholly in the padding, or no input pixel landing on it): torch 2.13's oneDNN crashes the
    process there (csrc/cpu/conv_geometry.h says more), so such calls run in float32 (the same
    float32 accumulation, one rounding)."""
    if x.dtype not in (torch.bfloat16, torch.float16) or x.device.type != "cpu" or x.dim() != 4:
        return False
    for i in range(2):
        size, k, s, p, d = x.shape[i + 2], weight.shape[i + 2], stride[i], padding[i], dilation[i]
        if transposed:
            out = (size - 1) * s - 2 * p + d * (k - 1) + output_padding[i] + 1
            taps = lambda o: any(  # noqa: E731
                (o + p - j * d) >= 0 and (o + p - j * d) % s == 0 and (o + p - j * d) // s < size
                for j in range(k)
            )
        else:
            if p == 0:
                continue
            out = (size + 2 * p - d * (k - 1) - 1) // s + 1
            taps = lambda o: any(0 <= o * s - p + j * d < size for j in range(k))  # noqa: E731
        if not all(taps(o) for o in range(out)):
            return True
    return False
