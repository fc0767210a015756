"""Checkpoints: checkpoint_epoch{N}.pt and latest.pt in the output folder, each written to a
temporary file first and moved into place with os.replace (a crash never leaves half a file)."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

LATEST = "latest.pt"
KEYS = ("model", "epoch", "step", "task", "rng", "metrics")  # what --resume reads


class CheckpointError(RuntimeError):
    """--resume without a usable checkpoint."""


def epoch_path(out: str, epoch: int) -> str:
    return os.path.join(out, f"checkpoint_epoch{epoch}.pt")


def atomic_save(obj, path: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def rng_state(loader_generator: torch.Generator | None = None) -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if loader_generator is not None:
        state["loader"] = loader_generator.get_state()
    return state


def set_rng_state(state: dict, loader_generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if loader_generator is not None and "loader" in state:
        loader_generator.set_state(state["loader"])


def save(out: str, epoch: int, state: dict) -> str:
    """Writes checkpoint_epoch{epoch}.pt and latest.pt; returns the epoch file's path."""
    path = epoch_path(out, epoch)
    atomic_save(state, path)
    atomic_save(state, os.path.join(out, LATEST))
    return path


def load_latest(out: str, map_location="cpu") -> dict:
    path = os.path.join(out, LATEST)
    if not os.path.exists(path):
        raise CheckpointError(f"--resume: no checkpoint {LATEST} in {out}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # not a torch.save file: torch and pickle raise many kinds
        raise CheckpointError(
            f"--resume: {path} is not a readable checkpoint "
            f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})"
        ) from e
    missing = [k for k in KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(
            f"--resume: {path} is not a genkern train checkpoint (no {', '.join(missing)})"
        )
    return ckpt
