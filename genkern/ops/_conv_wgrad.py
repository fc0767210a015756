"""The weight gradient of convs over channels_last tensors on genkern's AVX2 kernels
(csrc/cpu/conv_wgrad.h): a GEMM over the output pixels in 6 x 16 register tiles, where oneDNN's
AVX2 weight gradient runs at 33-58 GFLOP/s against its forward's 65-83 (2-core AMD Zen 1). The
transposed convs' weight gradients run on it too (roles swapped).

GENKERN_CPU_CONV_WGRAD: "auto" (default: float32, one group, channels_last input and gradient,
input channels a multiple of 16, an AVX2 CPU without AVX-512), "always" (the same on AVX-512
CPUs too: the tests), or "never". `set_mode` changes it at run time.
"""

from __future__ import annotations

from genkern.ops import _modes

MODES = _modes.MODES


_SWITCH = _modes.extension_switch(
    "GENKERN_CPU_CONV_WGRAD", "conv weight-gradient", "set_conv_wgrad_mode"
)
set_mode = _SWITCH.set  # switch the weight-gradient kernels' mode for this process
mode = _SWITCH.scoped  # set_mode(name) inside a with-block, the previous mode after it
