"""A process-wide switch of a C++ path (never / auto / always), read from an environment variable
at import and changeable at run time: the packed-weight conv path (_prepacked), the few-channel
col2im path (_col2im), the batched-GEMM deconv path (_conv_gemm), the linear forward's
dot-product GEMM (_dot_gemm), the first-layer conv kernels (_stem_conv), oneDNN's layout for NCHW
convs (_onednn_layout), the Winograd 4x4 stride-2 convs (_winograd) and oneDNN's matmul for the
dense layers' products (_onednn_matmul) each have one."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

MODES = ("never", "auto", "always")  # the ids the C++ side takes: 0, 1, 2


class Switch:
    def __init__(self, env: str, what: str, apply: Callable[[int], None]):
        self.what, self._apply = what, apply
        name = os.environ.get(env, "auto").strip().lower() or "auto"
        if name not in MODES:
            raise ValueError(f"{env} must be auto, always or never, but got {name!r}")
        self.set(name)

    def set(self, name: str) -> None:
        """Switch the mode for this process."""
        if name not in MODES:
            raise ValueError(f"{self.what} mode must be one of {MODES}, but got {name!r}")
        self.current = name
        self._apply(MODES.index(name))

    @contextlib.contextmanager
    def scoped(self, name: str):
        """set(name) inside the block, the previous mode after it."""
        previous = self.current
        self.set(name)
        try:
            yield
        finally:
            self.set(previous)


def extension_switch(env: str, what: str, setter: str) -> Switch:
    """A Switch whose mode ids go to genkern._C.<setter> (when the extension is built)."""
    from genkern import _ext

    def apply(mode_id: int) -> None:
        if _ext.HAS_CPU:
            getattr(_ext._C, setter)(mode_id)

    return Switch(env, what, apply)
