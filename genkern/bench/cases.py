"""Every benchmark case, from the per-family modules."""

from __future__ import annotations

from genkern.bench import cases_conv2d
from genkern.bench.case import Case

# issue 4: batch_norm + activation, pooling
from genkern.bench import cases_batchnorm, cases_pool  # isort: skip

ALL_CASES: list[Case] = [*cases_conv2d.CASES]
ALL_CASES += [*cases_batchnorm.CASES, *cases_pool.CASES]  # issue 4


def select(quick: bool = False, filter: str | None = None) -> list[Case]:
    """The cases of a run: --quick keeps the quick subset; --filter matches a name substring."""
    cases = [c for c in ALL_CASES if c.quick or not quick]
    if filter:
        terms = [t.strip() for t in filter.split(",") if t.strip()]
        cases = [c for c in cases if any(t in c.name or t == c.family for t in terms)]
    return cases
