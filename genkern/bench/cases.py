"""Every benchmark case, from the per-family modules."""

from __future__ import annotations

from genkern.bench import (
    cases_batchnorm,
    cases_conv2d,
    cases_conv_transpose2d,
    cases_linear,
    cases_losses,
    cases_models,
    cases_pool,
)
from genkern.bench.case import Case

ALL_CASES: list[Case] = [
    *cases_conv2d.CASES,
    *cases_conv_transpose2d.CASES,
    *cases_linear.CASES,
    *cases_batchnorm.CASES,
    *cases_pool.CASES,
    *cases_losses.CASES,
    *cases_models.CASES,
]


def select(quick: bool = False, filter: str | None = None) -> list[Case]:
    """The cases of a run: --quick keeps the quick subset; --filter matches a name substring."""
    cases = [c for c in ALL_CASES if c.quick or not quick]
    if filter:
        terms = [t.strip() for t in filter.split(",") if t.strip()]
        cases = [c for c in cases if any(t in c.name or t == c.family for t in terms)]
    return cases
