"""The batched-GEMM conv path of the CPU backend (csrc/cpu/conv_gemm.h): a transposed conv with many
input channels over a small input runs as one GEMM over the whole batch + a col2im gather
(backward: an im2col of the output gradient + two GEMMs), and a conv onto many channels over a
small output as the same engine with the roles swapped (forward: im2col of x + one GEMM), where
oneDNN runs at about half the matmul peak (a DCGAN generator's 512 -> 256 channel 4x4 -> 8x8 layer,
its discriminator's 256 -> 512 channel 8x8 -> 4x4 one).

GENKERN_CPU_CONV_GEMM: "auto" (default: the measured rule, float32, one group, 384 or more channels
on the small side over at most 16 pixels), "always" (every one-group float32/float64 call: the
tests run their shape grids through it), or "never". `set_mode` changes it at run time.
"""

from __future__ import annotations

from genkern.ops import _modes

MODES = _modes.MODES


_SWITCH = _modes.extension_switch("GENKERN_CPU_CONV_GEMM", "conv GEMM", "set_conv_gemm_mode")
set_mode = _SWITCH.set  # switch the batched-GEMM conv path's mode for this process
mode = _SWITCH.scoped  # set_mode(name) inside a with-block, the previous mode after it
