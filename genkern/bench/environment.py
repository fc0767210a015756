"""What a result was measured on: machine, versions, commit, date, threads."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess

import torch

import genkern
from genkern import _ext


def _commit() -> str:
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(genkern.__file__)))
        return (
            subprocess.run(
                ["git", "-C", root, "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            or "unknown"
        )
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
