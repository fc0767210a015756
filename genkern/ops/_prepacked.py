"""Inference path of conv2d / conv_transpose2d on the CPU backend: packed oneDNN weights, in C++
(csrc/cpu/prepacked.h: a call that records no gradient runs on a weight reordered once per input
shape and weight version, with the bias and the activation as oneDNN post-ops).

GENKERN_CPU_PREPACK: "auto" (default: on the first call of a shape both paths are timed and the
faster is kept, as cudnn.benchmark does: packing loses on small 3x3 layers, where ATen picks a
non-oneDNN kernel), "always", or "never". `set_mode` changes it at run time (and clears the cache).
"""

from __future__ import annotations

import contextlib
import os

import torch

from genkern import _ext

MODES = ("never", "auto", "always")  # the ids of genkern::cpu::PrepackMode


def _bfloat16() -> bool:
    """Whether oneDNN packs bfloat16 here (AVX512-BF16 / AVX-NE-CONVERT CPUs)."""
    bf16 = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bf16 is not None and bool(bf16())


AVAILABLE = _ext.HAS_CPU and torch.backends.mkldnn.is_available() and _ext._C.prepack_available()
MODE = os.environ.get("GENKERN_CPU_PREPACK", "auto").strip().lower() or "auto"
if MODE not in MODES:
    raise ValueError(f"GENKERN_CPU_PREPACK must be auto, always or never, but got {MODE!r}")


def set_mode(mode: str) -> None:
    """Switch the packed path's mode for this process (clears the packed weights)."""
    global MODE
    if mode not in MODES:
        raise ValueError(f"prepack mode must be one of {MODES}, but got {mode!r}")
    MODE = mode
    if _ext.HAS_CPU:
        _ext._C.set_prepack_mode(MODES.index(mode), _bfloat16())


@contextlib.contextmanager
def mode(name: str):
    """set_mode(name) inside the block, the previous mode after it."""
    previous = MODE
    set_mode(name)
    try:
        yield
    finally:
        set_mode(previous)


def state(weight: torch.Tensor) -> str | None:
    """What the cache holds for this weight: None, "regular" (the regular path was faster or
    oneDNN has no packed primitive for the call) or "packed"."""
    return (None, "regular", "packed")[_ext._C.prepack_state(weight) + 1]


set_mode(MODE)
