"""pytest-benchmark front end of the suite in genkern.bench (the cases are defined there once).

    pytest benchmarks/ --benchmark-only            every case, every provider
    pytest benchmarks/ --quick --benchmark-disable a smoke run: quick cases, each run once
Device and dtype: GENKERN_BENCH_DEVICE (default cuda if available, else cpu), --bench-dtype.
"""

import os

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption(
        "--quick", action="store_true", help="only the cases of `genkern bench --quick`"
    )
    parser.addoption("--bench-dtype", default="float32", choices=["float32", "bfloat16", "float16"])


DEVICE = torch.device(
    os.environ.get("GENKERN_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
)


@pytest.fixture(scope="session")
def bench_device():
    return DEVICE


@pytest.fixture(scope="session")
def bench_dtype(request):
    return getattr(torch, request.config.getoption("--bench-dtype"))


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--quick"):
        return
    keep = [i for i in items if getattr(i, "callspec", None) and i.callspec.params["case"].quick]
    deselected = [i for i in items if i not in keep]
    config.hook.pytest_deselected(items=deselected)
    items[:] = keep
