"""The dense layers' products (linear's forward and both backward products; a transposed conv of
a 1x1 input, a generator's first layer, is one GEMM too) on oneDNN's matmul
(torch's mkldnn::_linear_pointwise) instead of ATen's mm (MKL), csrc/cpu/onednn_matmul.h: on AMD's
AVX-512 CPUs MKL runs its AVX2 code and oneDNN its AVX-512 kernels, 2.0-2.3x faster.

GENKERN_CPU_ONEDNN_MATMUL: "auto" (default: float32 where ATen's GEMM runs narrower vectors than
oneDNN's, genkern._C.blas_as_wide_as_onednn() false), "always" (every float32 product that
genkern's small GEMM does not take: the tests run their grids through it on any CPU), or
"never". `set_mode` changes it at run time.
"""

from __future__ import annotations

from genkern.ops import _modes

MODES = _modes.MODES


_SWITCH = _modes.extension_switch(
    "GENKERN_CPU_ONEDNN_MATMUL", "oneDNN matmul", "set_onednn_matmul_mode"
)
set_mode = _SWITCH.set  # switch the oneDNN matmul path's mode for this process
mode = _SWITCH.scoped  # set_mode(name) inside a with-block, the previous mode after it
