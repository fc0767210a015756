"""Shared test setup.

Tests run on GENKERN_TEST_DEVICE (default: cuda when available, else cpu). Without a GPU the Triton
kernels run under the interpreter: TRITON_INTERPRET=1 is set here, before anything imports triton.
"""

import os

import pytest
import torch

DEVICE = os.environ.get("GENKERN_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import genkern  # noqa: E402
from genkern import backends  # noqa: E402


def device_backends(dtype=torch.float32) -> list[str]:
    """The backends that run on the test device for dtype (the Triton interpreter included)."""
    return backends.available_backends(DEVICE, dtype)


def grid_backends(dtype=torch.float32) -> list[str]:
    """Backends for the large test grids: the Triton interpreter is too slow for them and has
    its own test modules (tests/test_triton_*.py) with small shapes."""
    skip = {"triton"} if backends.triton_interpreter() else set()
    return [b for b in device_backends(dtype) if b not in skip]


@pytest.fixture
def device() -> str:
    return DEVICE


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


__all__ = ["DEVICE", "device_backends", "grid_backends", "genkern"]
