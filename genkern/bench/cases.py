"""Every benchmark case, from the per-family modules."""

from __future__ import annotations

from genkern.bench import (
    cases_conv2d,
    cases_conv_transpose2d,  # issue 3
    cases_linear,  # issue 3
    cases_models,
)
from genkern.bench.case import Case

ALL_CASES: list[Case] = [*cases_conv2d.CASES, *cases_models.CASES]
ALL_CASES += [*cases_conv_transpose2d.CASES, *cases_linear.CASES]  # issue 3


def select(quick: bool = False, filter: str | None = None) -> list[Case]:
    """The cases of a run: --quick keeps the quick subset; --filter matches a name substring."""
    cases = [c for c in ALL_CASES if c.quick or not quick]
    if filter:
        terms = [t.strip() for t in filter.split(",") if t.strip()]
        cases = [c for c in cases if any(t in c.name or t == c.family for t in terms)]
    return cases
