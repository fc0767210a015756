"""Inference path of conv2d / conv_transpose2d on the CPU backend: packed oneDNN weights.

When a call records no gradient, the weight is reordered once into oneDNN's blocked layout for
the input shape it meets and kept (keyed by the weight tensor, weakly) until it changes; later
calls of that shape run one oneDNN primitive with the bias and the activation as post-ops. Stock
eager reorders the weight on every call, which at batch 1 costs as much as the convolution.
The key holds the weight's storage, version counter and dtype, the bias's, and the call's shape,
strides and geometry: an optimizer step, load_state_dict or .to() repacks.

GENKERN_CPU_PREPACK: "auto" (default: on the first call of a shape both paths are timed and the
faster is kept, as cudnn.benchmark does: packing loses on small 3x3 layers, where ATen picks a
non-oneDNN kernel), "always", or "never".
"""

from __future__ import annotations

import os
import time

import torch
from torch.utils.weak import WeakIdKeyDictionary

from genkern import activations as A
from genkern.ops import _registry


def _dtypes() -> tuple:
    """float32, and bfloat16 where oneDNN packs it (AVX512-BF16 / AVX-NE-CONVERT CPUs)."""
    bf16 = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return (torch.float32, torch.bfloat16) if bf16 is not None and bf16() else (torch.float32,)


_DTYPES = _dtypes()
_POST_OPS = {
    A.IDENTITY: "none",
    A.RELU: "relu",
    A.LEAKY_RELU: "leaky_relu",
    A.TANH: "tanh",
    A.SIGMOID: "sigmoid",
    A.SILU: "swish",
}
AVAILABLE = torch.backends.mkldnn.is_available() and hasattr(
    torch.ops.mkldnn, "_convolution_pointwise"
)
MODE = os.environ.get("GENKERN_CPU_PREPACK", "auto").strip().lower() or "auto"
if MODE not in ("auto", "always", "never"):
    raise ValueError(f"GENKERN_CPU_PREPACK must be auto, always or never, but got {MODE!r}")

# Whether the packed path may run: the C++ fast entries leave calls that record no graph to it.
ENABLED = AVAILABLE and MODE != "never"

# weight -> (key, packed weight or None for "the regular path won")
_CACHE = WeakIdKeyDictionary()


def conv_eager_cpu(transposed: bool, args: tuple, out_format: torch.memory_format):
    """The cpu backend's plain eager conv2d / conv_transpose2d call (args as the op's C++ eager
    entry takes them, without its layout flag): the packed path where eligible, else the entry."""
    x, weight, bias = args[:3]
    ext = _registry.extension()
    entry = ext.conv_transpose2d_act_eager_cpu if transposed else ext.conv2d_act_eager_cpu

    def regular():
        return entry(*args, out_format == torch.channels_last)

    if not eligible(x, weight, bias):
        return regular()
    return (conv_transpose2d if transposed else conv2d)(*args, out_format, regular)


def eligible(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """A CPU call of a 4-D float32/bfloat16 input that records no autograd graph (the callers
    have checked the arguments and chosen the cpu backend's eager path)."""
    if not AVAILABLE or MODE == "never" or x.dim() != 4 or x.dtype not in _DTYPES:
        return False
    return not torch.is_grad_enabled() or not (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )


def conv2d(x, weight, bias, stride, padding, dilation, groups, act, slope, out_format, regular):
    """act(conv2d(x) + bias) in out_format; `regular()` is the regular kernel's call."""

    def pack():
        return torch.ops.mkldnn._reorder_convolution_weight(
            weight, padding, stride, dilation, groups, list(x.shape)
        )

    def run(packed):
        y = torch.ops.mkldnn._convolution_pointwise(
            x, packed, bias, padding, stride, dilation, groups, *_post_op(act, slope), ""
        )
        return y.contiguous(memory_format=out_format)

    geometry = (tuple(stride), tuple(padding), tuple(dilation), groups, act, slope)
    return _call(x, weight, bias, geometry, regular, pack, run)


def conv_transpose2d(
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
    out_format,
    regular,
):
    """As conv2d, for the transposed convolution."""

    def pack():
        return torch.ops.mkldnn._reorder_convolution_transpose_weight(
            weight, padding, output_padding, stride, dilation, groups, list(x.shape)
        )

    def run(packed):
        y = torch.ops.mkldnn._convolution_transpose_pointwise(
            x,
            packed,
            bias,
            padding,
            output_padding,
            stride,
            dilation,
            groups,
            *_post_op(act, slope),
            "",
        )
        return y.contiguous(memory_format=out_format)

    geometry = (
        tuple(stride),
        tuple(padding),
        tuple(output_padding),
        tuple(dilation),
        groups,
        act,
        slope,
    )
    return _call(x, weight, bias, geometry, regular, pack, run)


def _post_op(act: int, slope: float) -> tuple[str, list]:
    return _POST_OPS[act], ([slope] if act == A.LEAKY_RELU else [])


def _call(x, weight, bias, geometry, regular, pack, run):
    """The cached choice for this weight and call; on a miss, "auto" times both paths (the
    packed one after its first, primitive-creating run) and keeps the faster."""
    key = (
        weight.data_ptr(),
        weight._version,
        weight.dtype,
        weight.stride(),
        tuple(x.shape),
        x.stride(),
        geometry,
        None if bias is None else (bias.data_ptr(), bias._version, bias.dtype),
    )
    hit = _CACHE.get(weight)
    if hit is not None and hit[0] == key:
        return regular() if hit[1] is None else run(hit[1])
    try:  # oneDNN has no packed primitive for some geometries: the regular path then
        packed = pack()
        y_first = run(packed)  # creates the oneDNN primitive: not timed
    except RuntimeError:
        _CACHE[weight] = (key, None)
        return regular()
    if MODE == "always":
        _CACHE[weight] = (key, packed)
        return y_first
    y_regular, t_regular = _timed(regular)
    y_packed, t_packed = _timed(lambda: run(packed))
    keep = packed if t_packed < min(t_regular, _timed(regular)[1]) else None
    _CACHE[weight] = (key, keep)
    return y_regular if keep is None else y_packed


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t
