"""Inference path of conv2d / conv_transpose2d on the CPU backend: packed oneDNN weights, in C++
(csrc/cpu/prepacked.h: a call that records no gradient runs on a weight reordered once per
geometry and weight values, with the bias and the activation as oneDNN post-ops; the values are
checked by a fingerprint on every call, or by the version counter for weights frozen with
genkern.nn.freeze).

GENKERN_CPU_PREPACK: "auto" (default: on the first call of a geometry the paths are timed and
the fastest is kept for it, as cudnn.benchmark does: packing loses on small 3x3 layers, where ATen
picks a non-oneDNN kernel, and genkern's direct conv kernels win most batch-1 convs on AVX-512
CPUs), "always", or "never". `set_mode` changes it at run time (and clears the cache).
"""

from __future__ import annotations

import torch
from torch.autograd.graph import increment_version
from torch.optim.optimizer import register_optimizer_step_post_hook

from genkern import _ext
from genkern.ops import _modes

MODES = _modes.MODES
AVAILABLE = _ext.HAS_CPU and torch.backends.mkldnn.is_available() and _ext._C.prepack_available()


def _apply(mode_id: int) -> None:  # a new mode clears the packed weights
    if _ext.HAS_CPU:
        _ext._C.set_prepack_mode(mode_id, _bfloat16())


def _bfloat16() -> bool:
    """Whether oneDNN packs bfloat16 here (AVX512-BF16 / AVX-NE-CONVERT CPUs)."""
    bf16 = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bf16 is not None and bool(bf16())


_SWITCH = _modes.Switch("GENKERN_CPU_PREPACK", "prepack", _apply)
set_mode = _SWITCH.set  # switch the packed path's mode for this process (clears the cache)
mode = _SWITCH.scoped  # set_mode(name) inside a with-block, the previous mode after it


def state(weight: torch.Tensor) -> str | None:
    """What the cache holds for this weight: None, "regular" (the regular path was faster or
    oneDNN has no packed primitive for the call), "packed", "gemm" (the batched-GEMM path of
    genkern/ops/_conv_gemm.py was faster), "direct" (the direct conv kernels of
    genkern/ops/_stem_conv.py, on their own packed weight, were faster) or "winograd" (the
    Winograd path for 3x3 stride-1 layers, csrc/cpu/winograd_3x3.h, on its transformed weight)."""
    names = (None, "regular", "packed", "gemm", "direct", "winograd")
    return names[_ext._C.prepack_state(weight) + 1]


_step_hook = None  # the optimizer hook that watches frozen weights (made on the first freeze)


def _bump_frozen_after_fused_step(optimizer, args, kwargs) -> None:
    """torch's fused optimizer steps (Adam, AdamW, SGD with fused=True) write the parameters in
    place without bumping their version counters: a frozen weight's packed copy would go on
    serving the values from before the step. This bumps them for the frozen weights."""
    for group in optimizer.param_groups:
        if group.get("fused"):
            for p in group["params"]:
                if _ext._C.prepack_frozen(p):
                    increment_version(p)


def freeze_weight(weight: torch.Tensor, frozen: bool = True) -> None:
    """Mark (or unmark) a conv weight frozen: its packed copies are then checked by its version
    counter alone, not by a read of its values on every call (genkern.nn.freeze)."""
    global _step_hook
    if not AVAILABLE:
        return
    if frozen and _step_hook is None:
        _step_hook = register_optimizer_step_post_hook(_bump_frozen_after_fused_step)
    _ext._C.prepack_freeze(weight, frozen)
