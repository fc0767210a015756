"""The layout oneDNN runs an NCHW float32 conv or transposed conv in (csrc/cpu/onednn_layout.h):
given NCHW tensors oneDNN may pick a several-times slower implementation than for the same call
in channels_last, so such a call may run on channels_last copies, its results copied back.

GENKERN_CPU_ONEDNN_LAYOUT: "auto" (default: each geometry's first call times both layouts, the
copies included, and keeps the faster), "always" (every eligible NCHW call in channels_last: the
tests run their grids through it) or "never" (ATen's layout). `set_mode` changes it at run time
and forgets the timed choices.
"""

from __future__ import annotations

from genkern import _ext
from genkern.ops import _modes

MODES = _modes.MODES

_SWITCH = _modes.extension_switch(
    "GENKERN_CPU_ONEDNN_LAYOUT", "oneDNN layout", "set_onednn_layout_mode"
)
set_mode = _SWITCH.set  # switch the oneDNN layout choice's mode for this process
mode = _SWITCH.scoped  # set_mode(name) inside a with-block, the previous mode after it


def channels_last_calls() -> int:
    """Calls run in channels_last so far in this process (0 without the extension)."""
    return _ext._C.onednn_layout_channels_last_calls() if _ext.HAS_CPU else 0


def choices() -> int:
    """Geometries whose layout has been timed and kept."""
    return _ext._C.onednn_layout_choices() if _ext.HAS_CPU else 0


def timings() -> int:
    """Shapes timed since the mode was set (a layer's shapes past its 8th take its majority)."""
    return _ext._C.onednn_layout_timings() if _ext.HAS_CPU else 0
