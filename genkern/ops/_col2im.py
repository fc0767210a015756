"""Few-channel transposed convs on the CPU backend (csrc/cpu/col2im_path.h): a transposed conv
onto 1-3 channels (a decoder's or generator's last layer) and the input gradient of a conv from
1-3 channels (an encoder's or discriminator's first layer) run through ATen's GEMM + col2im kernel,
2-4.5x faster there than oneDNN's deconvolution on this project's CPUs.

GENKERN_CPU_COL2IM: "auto" (default: the measured rule, float32, one group, 1 output channel from
32 or more or 2-3 from 64 or more), "always" (every one-group float32/float64 call: the tests run
their shape grids through it), or "never". `set_mode` changes it at run time.
"""

from __future__ import annotations

from genkern.ops import _modes

MODES = _modes.MODES


_SWITCH = _modes.extension_switch("GENKERN_CPU_COL2IM", "col2im", "set_col2im_mode")
set_mode = _SWITCH.set  # switch the few-channel col2im path's mode for this process
mode = _SWITCH.scoped  # set_mode(name) inside a with-block, the previous mode after it
