"""Few-channel transposed convs on the CPU backend (csrc/cpu/col2im_path.h): a transposed conv
onto 1-3 channels (a decoder's or generator's last layer) and the input gradient of a conv from
1-3 channels (an encoder's or discriminator's first layer) run through ATen's GEMM + col2im kernel,
2-4.5x faster there than oneDNN's deconvolution on this project's CPUs.

GENKERN_CPU_COL2IM: "auto" (default: the measured rule, float32, one group, 1 output channel from
32 or more or 2-3 from 64 or more), "always" (every one-group float32/float64 call: the tests run
their shape grids through it), or "never". `set_mode` changes it at run time.
"""

from __future__ import annotations

import contextlib
import os

from genkern import _ext

MODES = ("never", "auto", "always")  # the ids of genkern::cpu::Col2imMode
MODE = os.environ.get("GENKERN_CPU_COL2IM", "auto").strip().lower() or "auto"
if MODE not in MODES:
    raise ValueError(f"GENKERN_CPU_COL2IM must be auto, always or never, but got {MODE!r}")


def set_mode(mode: str) -> None:
    """Switch the few-channel col2im path's mode for this process."""
    global MODE
    if mode not in MODES:
        raise ValueError(f"col2im mode must be one of {MODES}, but got {mode!r}")
    MODE = mode
    if _ext.HAS_CPU:
        _ext._C.set_col2im_mode(MODES.index(mode))


@contextlib.contextmanager
def mode(name: str):
    """set_mode(name) inside the block, the previous mode after it."""
    previous = MODE
    set_mode(name)
    try:
        yield
    finally:
        set_mode(previous)


set_mode(MODE)
