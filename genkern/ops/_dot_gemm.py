"""The dot-product GEMM of the CPU backend's linear forward (csrc/cpu/dot_gemm.h): each output of
act(x @ W^T + b) is the dot product of a row of x and a row of W as they lie, in 4x4 blocks of
16-lane accumulators on AVX-512 CPUs (2x4 blocks of 8 lanes on AVX2 ones), with nothing packed: a
batch-1 layer, or on AVX-512 one with a long in_features and few out_features (a VAE's 400 -> 20
mu head), where MKL's fixed cost and the broadcast tile's transposed copy of W dominate.

GENKERN_CPU_DOT_GEMM: "auto" (default: the measured rule), "always" (every float32 forward with
k-contiguous x and W on an AVX2 CPU: the tests run their grids through it) or "never".
`set_mode` changes it at run time.
"""

from __future__ import annotations

from genkern.ops import _modes

MODES = _modes.MODES

_SWITCH = _modes.extension_switch("GENKERN_CPU_DOT_GEMM", "dot GEMM", "set_dot_gemm_mode")
set_mode = _SWITCH.set  # switch the dot-product GEMM's mode for this process
mode = _SWITCH.scoped  # set_mode(name) inside a with-block, the previous mode after it
