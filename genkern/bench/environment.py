"""What a result was measured on: machine, versions, commit, date, threads."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess

import torch

import genkern
from genkern import _ext


def _commit(package_file: str | None = None) -> str:
    """The short commit of the genkern checkout this package runs from (a source tree or an
    editable install): only where the git toplevel's genkern/__init__.py is this package's file,
    not for an install inside another project's repository (its commit is not genkern's);
    "unknown" otherwise, and where git is missing."""
    package_file = os.path.abspath(package_file or genkern.__file__)

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", os.path.dirname(package_file), *args],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()

    try:
        top = git("rev-parse", "--show-toplevel")
        ours = os.path.join(top, "genkern", "__init__.py") if top else ""
        if not (ours and os.path.isfile(ours) and os.path.samefile(ours, package_file)):
            return "unknown"
        return git("rev-parse", "--short", "HEAD") or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device: torch.device) -> dict:
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": _commit(),
        "genkern": genkern.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "extension": "built" if _ext.HAS_CPU else f"missing ({_ext.LOAD_ERROR})",
        "extension_cuda": _ext.HAS_CUDA,
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["tf32"] = torch.backends.cuda.matmul.allow_tf32
        env["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    return env
