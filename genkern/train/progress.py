"""A tiny progress line (no tqdm): rewritten in place with \\r on a terminal, one line every
`every` steps otherwise."""

from __future__ import annotations

import sys
import time


def format_losses(values: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in values.items())


class Progress:
    def __init__(self, total: int, prefix: str, enabled: bool = True, every: int = 0, stream=None):
        self.total, self.prefix, self.enabled = total, prefix, enabled
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = every or max(1, total // 4)
        self.start = time.perf_counter()
        self.last = 0.0

    def update(self, step: int, images: int, values) -> None:
        """values: a dict of floats, or a callable returning one (called only when printing)."""
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.tty:
            if now - self.last < 0.1 and step < self.total:
                return
        elif step % self.every and step < self.total:
            return
        self.last = now
        rate = images / max(now - self.start, 1e-9)
        values = values() if callable(values) else values
        line = f"{self.prefix} {step}/{self.total} {format_losses(values)} {rate:.1f} img/s"
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self, line: str) -> None:
        if not self.enabled:
            return
        self.stream.write(("\r" + line + "\x1b[K" if self.tty else line) + "\n")
        self.stream.flush()
