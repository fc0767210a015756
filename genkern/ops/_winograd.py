"""4x4 stride-2 padding-1 convs and transposed convs (a DCGAN's middle layers, an autoencoder's and
a VAE's up- and down-sampling layers) by Winograd's F(4, 2) over their polyphase components
(csrc/cpu/winograd_s2.h): 0.39 of the direct conv's multiply-adds, as batched GEMMs over
transformed tiles. The input gradient of either direction is the other direction's forward, so
forward and input gradient both run on it; weight gradients stay on their own paths.

GENKERN_CPU_WINOGRAD: "auto" (default: the measured rule, float32, one group), "always" (every
float32/float64 call of this geometry: the tests run their grids through it), or "never".
`set_mode` changes it at run time.
"""

from __future__ import annotations

from genkern.ops import _modes

MODES = _modes.MODES


_SWITCH = _modes.extension_switch("GENKERN_CPU_WINOGRAD", "Winograd conv", "set_winograd_mode")
set_mode = _SWITCH.set  # switch the Winograd conv path's mode for this process
mode = _SWITCH.scoped  # set_mode(name) inside a with-block, the previous mode after it
