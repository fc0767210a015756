"""Every case of genkern.bench, every provider, through pytest-benchmark.

Each provider's result is checked against stock eager before it is timed: a wrong result fails
the test instead of being reported as a speedup.
"""

import pytest
import torch
from conftest import DEVICE

from genkern import testing
from genkern.bench.case import make_runner
from genkern.bench.cases import ALL_CASES
from genkern.bench.runner import CHECK_TOLERANCE, providers_for

PROVIDERS = providers_for(DEVICE, torch.float32)
_expected: dict = {}


def _outputs(value):
    return list(value) if isinstance(value, tuple) else [value]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: f"{c.name}-{c.mode}")
def test_case(benchmark, case, provider, bench_device, bench_dtype):
    inputs = case.make_inputs(bench_device, bench_dtype)
    key = (case.name, case.mode, bench_dtype)
    if key not in _expected:
        eager = make_runner(case, "eager", bench_device, bench_dtype, inputs)
        _expected[key] = [o.detach().clone() for o in _outputs(eager())]
    run = make_runner(case, provider, bench_device, bench_dtype, inputs)
    out = _outputs(run())
    err = max(testing.max_error(o, e) for o, e in zip(out, _expected[key]))
    assert err <= CHECK_TOLERANCE[bench_dtype], f"{provider} differs from stock eager by {err:.3g}"
    benchmark.extra_info.update(
        provider=provider,
        case=case.name,
        shape=case.shape,
        dtype=str(bench_dtype).replace("torch.", ""),
        mode=case.mode,
        device=str(bench_device),
        flops=case.flops_on(bench_device, bench_dtype),
        bytes=case.bytes,
    )
    benchmark(run)
