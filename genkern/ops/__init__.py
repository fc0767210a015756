"""genkern.ops: the public functional API. Each op is one torch.library custom op (namespace
"genkern") with a fake kernel and a registered backward, dispatched per call to a backend."""

from genkern.ops.conv2d import conv2d
from genkern.ops.conv_transpose2d import conv_transpose2d  # conv_transpose2d, linear: issue 3
from genkern.ops.linear import linear

__all__ = ["conv2d", "conv_transpose2d", "linear"]
