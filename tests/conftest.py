"""Shared test setup.

Tests run on GENKERN_TEST_DEVICE (default: cuda when available, else cpu). Without a GPU the Triton
kernels run under the interpreter: TRITON_INTERPRET=1 is set here, before anything imports triton.
"""

import os
import sys

import pytest
import torch
from hypothesis import HealthCheck, settings

DEVICE = os.environ.get("GENKERN_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import genkern  # noqa: E402
from genkern import backends  # noqa: E402

# Hypothesis profiles of the fuzz tests (tests/test_fuzz.py): "ci" is the default; select another
# with pytest's --hypothesis-profile=thorough (5,000 examples per op and backend).
_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile(
    "ci",
    max_examples=200,
    derandomize=True,
    deadline=None,
    suppress_health_check=_HEALTH,
    print_blob=True,
)
settings.register_profile(
    "thorough",
    max_examples=5000,
    derandomize=False,
    deadline=None,
    suppress_health_check=_HEALTH,
    print_blob=True,
)
settings.register_profile(
    "dev",
    max_examples=20,
    derandomize=True,
    deadline=None,
    suppress_health_check=_HEALTH,
    print_blob=True,
)
if not any(a.startswith("--hypothesis-profile") for a in sys.argv):
    settings.load_profile("ci")


def device_backends(dtype=torch.float32) -> list[str]:
    """The backends that run on the test device for dtype (the Triton interpreter included)."""
    return backends.available_backends(DEVICE, dtype)


def grid_backends(dtype=torch.float32) -> list[str]:
    """Backends for the large test grids: the Triton interpreter is too slow for them and has
    its own test modules (tests/test_triton_*.py) with small shapes."""
    skip = {"triton"} if backends.triton_interpreter() else set()
    return [b for b in device_backends(dtype) if b not in skip]


# the tests of the cpu backend's own kernels (backend="cpu" named): a pure-Python install has none
needs_cpu_backend = pytest.mark.skipif(
    not genkern._ext.HAS_CPU,
    reason=f"the C++ extension genkern._C is not available ({genkern._ext.LOAD_ERROR})",
)


@pytest.fixture
def device() -> str:
    return DEVICE


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


__all__ = ["DEVICE", "device_backends", "grid_backends", "genkern"]


def pytest_collection_modifyitems(config, items):
    """Tests marked slow (tests/test_large_tensors.py) run only when selected with `-m slow`
    (or GENKERN_RUN_SLOW=1): CI's plain `pytest tests` skips them."""
    if "slow" in (config.getoption("-m") or "") or os.environ.get("GENKERN_RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with `pytest -m slow` (see tests/README.md)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
