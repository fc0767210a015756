"""The cpu backend's two Winograd paths, switched together:

- 4x4 stride-2 padding-1 convs and transposed convs (a DCGAN's middle layers, an autoencoder's
  and a VAE's up- and down-sampling layers) by F(4, 2) over their polyphase components
  (csrc/cpu/winograd_s2.h): 0.39 of the direct conv's multiply-adds, as batched GEMMs over
  transformed tiles. The input gradient of either direction is the other direction's forward, so
  forward and input gradient both run on it; weight gradients stay on their own paths.
- 3x3 stride-1 padding-1 convs (a CNN's layers) by F(2x2, 3x3) (csrc/cpu/winograd_3x3.h): 0.44
  of the multiply-adds, an inference candidate of conv2d (calls that record no gradient) that
  the packed path's auto mode times against the others (genkern/ops/_prepacked.py).

GENKERN_CPU_WINOGRAD: "auto" (default: F(4, 2) by the measured rule, float32, one group; the
3x3 candidate where its timing wins), "always" (every float32/float64 call of the 4x4 geometry,
and every 3x3 inference call untimed: the tests run their grids through them), or "never".
`set_mode` changes it at run time.
"""

from __future__ import annotations

from genkern.ops import _modes

MODES = _modes.MODES


_SWITCH = _modes.extension_switch("GENKERN_CPU_WINOGRAD", "Winograd conv", "set_winograd_mode")
set_mode = _SWITCH.set  # switch the Winograd conv path's mode for this process
mode = _SWITCH.scoped  # set_mode(name) inside a with-block, the previous mode after it
