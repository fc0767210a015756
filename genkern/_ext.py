"""Loads the compiled extension genkern._C, or records why it is not there (with one warning)."""

import importlib.util
import warnings

import torch  # noqa: F401  (loads libc10/libtorch, which genkern._C links against)

try:
    from genkern import _C  # noqa: F401  (the extension module)

    LOAD_ERROR = None
except ImportError as exc:  # a pure-Python install, or an extension that does not load
    _C = None
    if importlib.util.find_spec("genkern._C") is None:  # (Python's error: "circular import")
        LOAD_ERROR = "a pure-Python install: GENKERN_BUILD_EXT=0"
    else:  # built against another torch, say
        LOAD_ERROR = f"it is there but does not load: {exc or type(exc).__name__}"
    warnings.warn(
        f"genkern: the compiled extension genkern._C is not available ({LOAD_ERROR}); the "
        "'cpu' and 'cuda' backends are disabled, 'torch' and 'triton' still work. To build it, "
        "reinstall genkern from its source with `pip install --no-build-isolation .` (-e for an "
        "editable install) against the torch installed here.",
        RuntimeWarning,
        stacklevel=2,
    )

HAS_CPU = _C is not None
HAS_CUDA = HAS_CPU and bool(getattr(_C, "with_cuda", False))
