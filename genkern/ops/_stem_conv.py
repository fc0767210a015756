"""The few-input-channel conv path of the CPU backend (csrc/cpu/stem_conv.h): a conv from 1-4
channels (a net's first layer, on an image) runs on direct AVX-512 kernels (AVX2 ones on CPUs
without AVX-512), forward and weight gradient, where oneDNN spends its time on a reduction only
9-48 taps long.

GENKERN_CPU_STEM_CONV: "auto" (default: the measured rule, float32, one group, at most 4 input
channels and 64 taps, channels_last output, an AVX2 CPU), "always" (every one-group float32
call on an AVX2 CPU: the tests run their shape grids through it), or "never". `set_mode`
changes it at run time.
"""

from __future__ import annotations

from genkern.ops import _modes

MODES = _modes.MODES


_SWITCH = _modes.extension_switch("GENKERN_CPU_STEM_CONV", "stem conv", "set_stem_conv_mode")
set_mode = _SWITCH.set  # switch the few-input-channel conv path's mode for this process
mode = _SWITCH.scoped  # set_mode(name) inside a with-block, the previous mode after it
