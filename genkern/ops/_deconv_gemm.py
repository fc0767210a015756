"""Transposed convs with many input channels over a small input on the CPU backend
(csrc/cpu/deconv_gemm.h): one batched GEMM over the whole batch + a col2im gather (backward: an
im2col of the output gradient + two GEMMs), where oneDNN's deconvolution runs at about half the
matmul peak (a DCGAN generator's 512 -> 256 channel 4x4 -> 8x8 layer).

GENKERN_CPU_DECONV_GEMM: "auto" (default: the measured rule, float32, one group, 512 or more input
channels over at most 16 input pixels), "always" (every one-group float32/float64 call: the tests
run their shape grids through it), or "never". `set_mode` changes it at run time.
"""

from __future__ import annotations

from genkern.ops import _modes

MODES = _modes.MODES


_SWITCH = _modes.extension_switch("GENKERN_CPU_DECONV_GEMM", "deconv GEMM", "set_deconv_gemm_mode")
set_mode = _SWITCH.set  # switch the batched-GEMM deconv path's mode for this process
mode = _SWITCH.scoped  # set_mode(name) inside a with-block, the previous mode after it
