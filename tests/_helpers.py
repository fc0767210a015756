"""Helpers shared by the op test modules."""

import os
import subprocess
import sys

import pytest
import torch

import genkern
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


def subprocess_env(**overrides: str) -> dict:
    """os.environ with `overrides` and this checkout first on PYTHONPATH: the environment of a
    subprocess that must import this genkern (settings read once per process go in overrides)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(genkern.__file__)))
    env = dict(os.environ, **overrides)
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    return env


def run_without_avx512(test_file: str, select: str) -> None:
    """Runs test_file's tests matching `select` in a subprocess with GENKERN_CPU_NO_AVX512=1 (read
    once per process), so that an AVX-512 CPU runs them on the AVX2 kernels too; none may skip."""
    env = subprocess_env(GENKERN_CPU_NO_AVX512="1")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", test_file]
        + ["-k", select],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert " passed" in run.stdout and " skipped" not in run.stdout, run.stdout[-3000:]


def assert_same_bits_without_avx512(script: str, tmp_path, env: dict | None = None) -> None:
    """Runs `script` (python -c; it saves a list of tensors to the path in sys.argv[1]) twice, on
    the AVX-512 kernels and with GENKERN_CPU_NO_AVX512=1 on the AVX2 ones, and checks that both
    give the same bits."""
    outs = {}
    for name, off in (("avx512", "0"), ("avx2", "1")):
        run_env = subprocess_env(GENKERN_CPU_NO_AVX512=off, **(env or {}))
        path = tmp_path / f"{name}.pt"
        run = subprocess.run(
            [sys.executable, "-c", script, str(path)], env=run_env, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr[-3000:]
        outs[name] = torch.load(path)
    assert len(outs["avx512"]) == len(outs["avx2"]) > 0
    for a, c in zip(outs["avx512"], outs["avx2"]):
        assert torch.equal(a, c)
