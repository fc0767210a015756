"""Helpers shared by the op test modules."""

import pytest
import torch

from genkern import testing


def assert_unchanged(before: list, after: list) -> None:
    """Inputs are bit-identical after the op (never mutated)."""
    for i, (b, a) in enumerate(zip(before, after)):
        if b is not None:
            assert torch.equal(b, a.detach()), f"input #{i} was modified"


def clones(tensors):
    return [None if t is None else t.detach().clone() for t in tensors]


def check_against_reference_unmodified(fn, ref, inputs, dtype, what) -> None:
    """testing.check_against_reference, and every input bit-identical after it (never mutated)."""
    before = clones(inputs)
    testing.check_against_reference(fn, ref, inputs, dtype, what)
    assert_unchanged(before, inputs)


__all__ = ["assert_unchanged", "check_against_reference_unmodified", "clones", "testing"]


def check_mode_switch(switch, what: str, current_mode) -> None:
    """A CPU path's switch (genkern/ops/_modes.py) refuses an unknown name in torch's wording and
    gives the C++ side each mode's id (read back by current_mode())."""
    with pytest.raises(ValueError, match=f"{what} mode must be one of"):
        switch.set_mode("sometimes")
    for name in switch.MODES:
        with switch.mode(name):
            assert current_mode() == switch.MODES.index(name)
