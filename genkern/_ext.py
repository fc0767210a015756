"""Loads the compiled extension genkern._C, or records why it is not there (with one warning)."""

import warnings

import torch  # noqa: F401  (loads libc10/libtorch, which genkern._C links against)

try:
    from genkern import _C  # noqa: F401  (the extension module)

    LOAD_ERROR = None
except ImportError as exc:  # pure-Python install, or a build that failed
    _C = None
    LOAD_ERROR = str(exc) or type(exc).__name__
    warnings.warn(
        "genkern: the compiled extension genkern._C is not available "
        f"({LOAD_ERROR}); the 'cpu' and 'cuda' backends are disabled, "
        "'torch' and 'triton' still work. Reinstall with "
        "`pip install --no-build-isolation -e .` to build it.",
        RuntimeWarning,
        stacklevel=2,
    )

HAS_CPU = _C is not None
HAS_CUDA = HAS_CPU and bool(getattr(_C, "with_cuda", False))
