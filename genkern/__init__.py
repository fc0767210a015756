"""genkern: fused Triton, CUDA C++ and C++ kernels for the nets of image generation.

import genkern
y = genkern.ops.conv2d(x, w, b, stride=2, padding=1, activation="leaky_relu", negative_slope=0.2)
layer = genkern.nn.Conv2d(3, 64, 4, stride=2, padding=1, activation="relu")
"""

__version__ = "0.1.0"

try:
    from genkern import (  # noqa: E402
        _ext,  # noqa: F401  (loads genkern._C, or warns once)
        nn,
        ops,
    )
except ValueError as _exc:  # a GENKERN_CPU_* variable that names no mode (genkern/ops/_modes.py)
    from genkern import _args

    if _args.in_cli():  # the genkern command reports it in one line, not a traceback
        _args.exit_with_error(str(_exc))
    raise
from genkern.backends import BACKENDS, available_backends, use_backend  # noqa: E402

__all__ = ["BACKENDS", "available_backends", "nn", "ops", "use_backend", "__version__"]
