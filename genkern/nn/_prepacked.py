"""Inference fast path of genkern.nn.Conv2d / ConvTranspose2d on the CPU backend.

When no gradient is recorded, a conv layer's weight is reordered once into oneDNN's blocked
layout for the input shape it meets and kept (per module, outside its state) until the weight
changes; later calls of that shape run one oneDNN primitive with the bias and the activation as
post-ops. Stock eager reorders the weight on every call, which at batch 1 costs as much as the
convolution itself. The first call of each shape runs the regular op (its argument checks, its
errors); the cache is keyed by the weight's storage, version counter, dtype and the call's shape
and layout, so an optimizer step, load_state_dict or .to() repacks.
"""

from __future__ import annotations

import os
import time
import weakref

import torch

from genkern import activations as A
from genkern import backends
from genkern.ops import _fused
from genkern.ops.conv2d import output_format

_DTYPES = (torch.float32, torch.bfloat16)
_POST_OPS = {
    A.IDENTITY: "none",
    A.RELU: "relu",
    A.LEAKY_RELU: "leaky_relu",
    A.TANH: "tanh",
    A.SIGMOID: "sigmoid",
    A.SILU: "swish",
}
# module -> (key, packed weight): outside the module, so deepcopy, pickling and state_dict never
# see the opaque oneDNN tensor
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(
        torch.ops.mkldnn, "_convolution_pointwise"
    )


AVAILABLE = _available()
# GENKERN_CPU_PREPACK: "auto" (time both paths on a layer's first call of a shape, keep the
# faster, as cudnn.benchmark does), "always", or "never"
MODE = os.environ.get("GENKERN_CPU_PREPACK", "auto").strip().lower() or "auto"
if MODE not in ("auto", "always", "never"):
    raise ValueError(f"GENKERN_CPU_PREPACK must be auto, always or never, but got {MODE!r}")


def _eligible(module, x: torch.Tensor, op: str) -> bool:
    w, b = module.weight, module.bias
    if torch.is_grad_enabled() and (
        x.requires_grad or w.requires_grad or (b is not None and b.requires_grad)
    ):
        return False
    return (
        AVAILABLE
        and MODE != "never"
        and x.device.type == "cpu"
        and x.dim() == 4
        and x.dtype in _DTYPES
        and _fused.fast_eager(x, w, b)
        and backends.resolve(op, module.backend, x) == "cpu"
    )


def _post_op(module) -> tuple[str, list]:
    act = A.activation_id(module.activation)
    scalars = [module.negative_slope] if act == A.LEAKY_RELU else []
    return _POST_OPS[act], scalars


def conv2d(module, x, padding, regular):
    """module's conv2d of x (padding resolved by the module): the packed primitive when eligible
    and chosen for this shape, else `regular()`, the regular op."""
    if isinstance(padding, str) or not _eligible(module, x, "conv2d"):
        return regular()
    pad, stride, dil = _pair(padding), list(module.stride), list(module.dilation)
    attr, scalars = _post_op(module)

    def pack():
        return torch.ops.mkldnn._reorder_convolution_weight(
            module.weight, pad, stride, dil, module.groups, list(x.shape)
        )

    def run(packed):
        y = torch.ops.mkldnn._convolution_pointwise(
            x, packed, module.bias, pad, stride, dil, module.groups, attr, scalars, ""
        )
        return y.contiguous(memory_format=output_format(x, module.weight))

    return _call(
        module, x, (tuple(pad), tuple(stride), tuple(dil), module.groups), regular, pack, run
    )


def conv_transpose2d(module, x, output_padding, regular):
    """As conv2d, for ConvTranspose2d with this call's output_padding."""
    if not _eligible(module, x, "conv_transpose2d"):
        return regular()
    pad, out_pad = list(module.padding), list(output_padding)
    stride, dil = list(module.stride), list(module.dilation)
    attr, scalars = _post_op(module)

    def pack():
        return torch.ops.mkldnn._reorder_convolution_transpose_weight(
            module.weight, pad, out_pad, stride, dil, module.groups, list(x.shape)
        )

    def run(packed):
        y = torch.ops.mkldnn._convolution_transpose_pointwise(
            x, packed, module.bias, pad, out_pad, stride, dil, module.groups, attr, scalars, ""
        )
        return y.contiguous(memory_format=output_format(x, module.weight))

    geometry = (tuple(pad), tuple(out_pad), tuple(stride), tuple(dil), module.groups)
    return _call(module, x, geometry, regular, pack, run)


def _call(module, x, geometry, regular, pack, run):
    """The cached choice for this module and call; on a miss, the regular op runs first (its
    checks and errors), then, under "auto", both paths are timed and the faster one is kept (the
    packed one loses on small 3x3 layers, where ATen picks a non-oneDNN kernel)."""
    w, b = module.weight, module.bias
    key = (
        w.data_ptr(),
        w._version,
        w.dtype,
        tuple(x.shape),
        x.stride(),
        geometry,
        None if b is None else (b.data_ptr(), b._version, b.dtype),
    )
    hit = _CACHE.get(module)
    if hit is not None and hit[0] == key:
        return regular() if hit[1] is None else run(hit[1])
    y_regular, t_regular = _timed(regular)
    packed = pack()
    if MODE == "always":
        _CACHE[module] = (key, packed)
        return run(packed)
    run(packed)  # the first run creates the oneDNN primitive: not timed
    y_packed, t_packed = _timed(lambda: run(packed))
    keep = packed if t_packed < min(t_regular, _timed(regular)[1]) else None
    _CACHE[module] = (key, keep)
    return y_regular if keep is None else y_packed


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _pair(v) -> list[int]:
    return [v, v] if isinstance(v, int) else list(v)
