"""Per-backend kernels of each op, looked up by the custom ops' bodies.

Backends register lazily: the Triton modules import triton only when a Triton kernel first runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from genkern import _ext, reference  # noqa: F401

# op -> backend -> a callable, "module:function" (imported on first use) or "ext:function"
# (an entry point of the compiled extension genkern._C, called with the op's arguments as they are)
_TABLE: dict[str, dict[str, str | Callable]] = {}


def register(op: str, **impls: str | Callable) -> None:
    _TABLE.setdefault(op, {}).update(impls)


def kernel(op: str, backend: str) -> Callable:
    impl = _TABLE[op][backend]
    if isinstance(impl, str):
        module, _, attr = impl.partition(":")
        source = _ext._C if module == "ext" else importlib.import_module(module)
        impl = _TABLE[op][backend] = getattr(source, attr)
    return impl


def extension():
    """The compiled module genkern._C (callers have checked the backend is available)."""
    return _ext._C
