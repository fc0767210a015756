"""Backend registry and selection.

A call's backend is, in order: its `backend=` argument when not "auto", the innermost
`genkern.use_backend(...)` context, the GENKERN_BACKEND environment variable, else "auto".
"auto" takes the first available backend of AUTO_ORDER for the tensor's device.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import threading

import torch

from genkern import _ext

BACKENDS = ("torch", "cpu", "cuda", "triton")
# Fastest first, per device type. The Triton interpreter is a test vehicle, never auto on CPU.
AUTO_ORDER = {"cpu": ("cpu", "torch"), "cuda": ("cuda", "triton", "torch")}

_FLOAT_TYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_TRITON_TYPES = (torch.float32, torch.bfloat16, torch.float16)

_state = threading.local()


def _check_name(name: str) -> str:
    if name != "auto" and name not in BACKENDS:
        valid = ", ".join(repr(b) for b in ("auto", *BACKENDS))
        raise ValueError(f"backend must be one of {valid}, but got {name!r}")
    return name


@contextlib.contextmanager
def use_backend(name: str):
    """Context manager: genkern ops inside it use backend `name` unless a call names its own."""
    _check_name(name)
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(name)
    if _ext.HAS_CPU:  # the C++ fast entries resolve "auto" from their mirror of this stack
        _ext._C.push_backend_context(name)
    try:
        yield name
    finally:
        stack.pop()
        if _ext.HAS_CPU:
            _ext._C.pop_backend_context()


def triton_interpreter() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def triton_import_error() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "the triton package is not installed (pip install triton)"
    return None


def unavailable_reason(name: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """None when backend `name` can run on tensors of this device and dtype, else why not."""
    kind = device.type
    if name == "torch":
        return None
    if name == "cpu":
        if not _ext.HAS_CPU:
            return f"the C++ extension genkern._C is not available ({_ext.LOAD_ERROR})"
        if kind != "cpu":
            return f"it runs on CPU tensors only, and the tensors are on {kind}"
        if dtype not in _FLOAT_TYPES:
            return f"it does not support {dtype}"
        return None
    if name == "cuda":
        if not _ext.HAS_CPU:
            return f"the C++ extension genkern._C is not available ({_ext.LOAD_ERROR})"
        if not _ext.HAS_CUDA:
            return "genkern._C was built without CUDA (a CPU build of torch, or no nvcc)"
        if kind != "cuda":
            return f"it runs on CUDA tensors only, and the tensors are on {kind}"
        if dtype not in _FLOAT_TYPES:
            return f"it does not support {dtype}"
        return None
    if name == "triton":
        err = triton_import_error()
        if err:
            return err
        if kind == "cpu" and not triton_interpreter():
            return "Triton runs on CUDA tensors, or on CPU tensors only with TRITON_INTERPRET=1"
        if kind not in ("cpu", "cuda"):
            return f"Triton does not run on {kind} tensors"
        if dtype not in _TRITON_TYPES:
            return f"its kernels support float32, float16 and bfloat16, not {dtype}"
        return None
    raise ValueError(f"unknown backend {name!r}")


def available_backends(
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> list[str]:
    device = torch.device(device)
    return [b for b in BACKENDS if unavailable_reason(b, device, dtype) is None]


def requested_backend(backend: str = "auto") -> str:
    """The backend name a call asks for, before looking at its tensors."""
    if backend != "auto":
        return _check_name(backend)
    stack = getattr(_state, "stack", None)
    if stack:
        return stack[-1]
    env = os.environ.get("GENKERN_BACKEND", "").strip()
    if env:
        try:
            return _check_name(env)
        except ValueError as exc:
            raise ValueError(f"GENKERN_BACKEND: {exc}") from None
    return "auto"


def auto_backend(device: torch.device | str, dtype: torch.dtype = torch.float32) -> str:
    """The backend "auto" picks for tensors of this device and dtype."""
    device = torch.device(device)
    for candidate in AUTO_ORDER.get(device.type, ("torch",)):
        if unavailable_reason(candidate, device, dtype) is None:
            return candidate
    return "torch"


@functools.lru_cache(maxsize=256)
def _resolve(op: str, name: str, device_type: str, device_index, dtype: torch.dtype) -> str:
    device = (
        torch.device(device_type, device_index)
        if device_index is not None
        else torch.device(device_type)
    )
    if name == "auto":
        return auto_backend(device, dtype)
    reason = unavailable_reason(name, device, dtype)
    if reason is not None:
        here = ", ".join(repr(b) for b in available_backends(device, dtype))
        raise RuntimeError(
            f"genkern.ops.{op}: backend {name!r} is not available for {dtype} tensors on "
            f"{device}: {reason}. Available here: {here}."
        )
    return name


def _assume_constant_result(fn):
    """torch.compiler.assume_constant_result's mark, set without importing torch._dynamo: that
    import (sympy, triton) is most of `import genkern`'s time (1.0-2.1 s -> 0.1 s after torch), and
    plain eager use never needs it. tests/test_backends.py checks the mark is still torch's."""
    fn._dynamo_marked_constant = True
    return fn


@_assume_constant_result
def _resolve_request(op: str, backend: str, device_type: str, device_index, dtype) -> str:
    # torch.compile calls this once while tracing and bakes the answer into the graph: a later
    # change of use_backend() / GENKERN_BACKEND does not recompile a compiled function.
    return _resolve(op, requested_backend(backend), device_type, device_index, dtype)


def resolve(op: str, backend: str, tensor: torch.Tensor) -> str:
    """The concrete backend that runs `op` on `tensor`'s device and dtype."""
    dev = tensor.device
    return _resolve_request(op, backend, dev.type, dev.index, tensor.dtype)
