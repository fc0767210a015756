"""Direct AVX-512 kernels for the transposed convs of the few-channel col2im path (csrc/cpu/
head_convt.h): a transposed conv onto 1-4 channels (a decoder's or generator's last layer) and the
input gradient of a conv from 1-4 channels, where kW * C_out <= 16 and kH * kW * C_out <= 64.

GENKERN_CPU_HEAD_CONVT: "auto" or "always" (default auto: the kernels wherever a call of the col2im
path fits them), or "never" (ATen's GEMM + col2im kernel). `set_mode` changes it at run time.
"""

from __future__ import annotations

from genkern.ops import _modes

MODES = _modes.MODES


_SWITCH = _modes.extension_switch("GENKERN_CPU_HEAD_CONVT", "head convt", "set_head_convt_mode")
set_mode = _SWITCH.set  # switch the head kernels' mode for this process
mode = _SWITCH.scoped  # set_mode(name) inside a with-block, the previous mode after it
