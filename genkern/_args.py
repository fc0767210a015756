"""argparse types shared by the `genkern` subcommands: a user's mistake gets argparse's one-line
error and exit status 2, not a traceback (found by the fuzz of the CLI)."""

from __future__ import annotations

import argparse
import os
import sys

import torch


def device(value: str) -> str:
    """A torch device string this torch can run: cpu, or cuda[:i] where CUDA is available."""
    try:
        dev = torch.device(value)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"not a device: {value!r} (cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(
            f"{value!r}: CUDA is not available here (torch {torch.__version__})"
        )
    if dev.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{value!r}: genkern runs on cpu or cuda")
    return value


def positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def name_list(value: str) -> str:
    """Comma-separated names, at least one: empty items are dropped (a trailing comma), an empty
    list is an error (it would silently have meant "all")."""
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, but got {value!r}")
    return ",".join(names)


def in_cli() -> bool:
    """Whether this process runs the genkern command: the console script, `python -m genkern`
    (while the package is imported, sys.argv[0] is "-m" and sys.orig_argv names the module) or
    `python -m genkern.cli`."""
    argv = getattr(sys, "argv", None) or [""]
    if argv[0] == "-m":
        orig = getattr(sys, "orig_argv", None) or []
        i = len(orig) - len(argv)
        return 0 <= i < len(orig) and orig[i] in ("genkern", "genkern.cli")
    return os.path.basename(argv[0]).removesuffix(".exe") == "genkern"


def exit_with_error(message: str):
    """The genkern command's one-line error for what is not an argument (argparse's form)."""
    print(f"genkern: error: {message}", file=sys.stderr)
    raise SystemExit(2)
