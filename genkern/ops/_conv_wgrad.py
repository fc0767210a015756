"""The weight gradient of convs over channels_last tensors on genkern's own kernels
(csrc/cpu/conv_wgrad.h): a GEMM over the output pixels in register tiles, 6 x 16 on AVX2 (where
oneDNN's AVX2 weight gradient runs at 33-58 GFLOP/s against its forward's 65-83 on a 2-core AMD
Zen 1) and 12 x 32 on AVX-512 (393-549 against oneDNN's 301-357 on a 2-core Zen 5). The
transposed convs' weight gradients run on it too (roles swapped).

GENKERN_CPU_CONV_WGRAD: "auto" (default: float32, one group, channels_last input and gradient,
input channels a multiple of 16, on an AVX2 CPU without AVX-512, or on AMD's AVX-512 CPUs with 64
or more input channels a multiple of 32), "always" (every call the kernels take on any AVX2 CPU:
the tests), or "never". `set_mode` changes it at run time.
"""

from __future__ import annotations

from genkern.ops import _modes

MODES = _modes.MODES


_SWITCH = _modes.extension_switch(
    "GENKERN_CPU_CONV_WGRAD", "conv weight-gradient", "set_conv_wgrad_mode"
)
set_mode = _SWITCH.set  # switch the weight-gradient kernels' mode for this process
mode = _SWITCH.scoped  # set_mode(name) inside a with-block, the previous mode after it
