"""README.md's examples stay true: its Python blocks run, and it opens with the two commands."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_readme_python_examples_run():
    blocks = _blocks("python")
    assert blocks, "README.md has no python example"
    for code in blocks:
        scope: dict = {}
        exec(compile(code, str(README), "exec"), scope)  # noqa: S102
        if "y" in scope and "x" in scope and isinstance(scope["y"], torch.Tensor):
            assert torch.isfinite(scope["y"]).all()


def test_readme_opens_with_the_bench_and_test_commands():
    first = _blocks("bash")[0].splitlines()
    assert first[0].startswith("bash .ci/install && genkern bench")
    assert first[1].startswith("bash .ci/install && python -m pytest tests")
