"""genkern.ops: the public functional API. Each op is one torch.library custom op (namespace
"genkern") with a fake kernel and a registered backward, dispatched per call to a backend."""

from genkern.ops.conv2d import conv2d

# issue 4: batch_norm + activation, pooling, upsampling
from genkern.ops.batch_norm import batch_norm  # isort: skip
from genkern.ops.pool import avg_pool2d, max_pool2d, upsample_nearest2d  # isort: skip

__all__ = ["conv2d"]
__all__ += ["batch_norm", "max_pool2d", "avg_pool2d", "upsample_nearest2d"]
