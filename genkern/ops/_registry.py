"""Per-backend kernels of each op, looked up by the custom ops' bodies.

Backends register lazily: the Triton modules import triton only when a Triton kernel first runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from genkern import _ext, reference  # noqa: F401

# op -> backend -> "module:function" (imported on first use) or a callable
_TABLE: dict[str, dict[str, str | Callable]] = {}


def register(op: str, **impls: str | Callable) -> None:
    _TABLE.setdefault(op, {}).update(impls)


def kernel(op: str, backend: str) -> Callable:
    impl = _TABLE[op][backend]
    if isinstance(impl, str):
        module, _, attr = impl.partition(":")
        impl = _TABLE[op][backend] = getattr(importlib.import_module(module), attr)
    return impl


def extension():
    """The compiled module genkern._C (callers have checked the backend is available)."""
    return _ext._C
