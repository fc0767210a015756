"""A benchmark case: one op (or model) at one shape, in one mode, with its providers.

A case builds its inputs once; each provider turns them into a zero-argument callable that runs
one forward (mode "forward") or one forward + backward (mode "forward+backward"). Providers:
  eager          stock PyTorch as users write it (NCHW)
  eager_cl       stock PyTorch with channels_last inputs and weights
  compile        torch.compile of the stock function
  genkern:<b>    genkern with backend <b>
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

STOCK_PROVIDERS = ("eager", "eager_cl", "compile")


@dataclass
class Case:
    name: str  # unique, e.g. "conv2d/dcgan-D1"
    family: str  # op family or "model"
    shape: str  # human-readable shape
    mode: str  # "forward" | "forward+backward"
    make_inputs: Callable[[torch.device, torch.dtype], list]  # tensors (and None) for the fns
    stock: Callable  # stock(*inputs) -> Tensor
    genkern: Callable  # genkern(*inputs, backend=...) -> Tensor
    flops: float = 0.0  # of one call (forward + backward in that mode): compute-bound cases
    bytes: float = 0.0  # moved by one call: memory-bound cases
    quick: bool = False  # part of `genkern bench --quick`
    tags: tuple = field(default_factory=tuple)
    # whole-model cases build their own callable per provider: runner(provider, device, dtype)
    runner: Callable | None = None
    # and count their FLOPs when run: count_flops(device, dtype) -> flops of one call
    count_flops: Callable[[torch.device, torch.dtype], float] | None = None

    _counted: dict = field(default_factory=dict, repr=False)

    def flops_on(self, device: torch.device, dtype: torch.dtype) -> float:
        """FLOPs of one call: given, or counted once (whole-model cases), or 0 (memory-bound)."""
        if self.flops or self.count_flops is None:
            return self.flops
        key = (str(device), dtype)
        if key not in self._counted:
            self._counted[key] = self.count_flops(device, dtype)
        return self._counted[key]

    @property
    def bound(self) -> str:
        return "compute" if self.flops else "memory"


def channels_last(t):
    if isinstance(t, torch.Tensor) and t.dim() == 4:
        return (
            t.detach().contiguous(memory_format=torch.channels_last).requires_grad_(t.requires_grad)
        )
    return t


def make_runner(
    case: Case, provider: str, device: torch.device, dtype: torch.dtype, inputs: list
) -> Callable[[], torch.Tensor | tuple]:
    """A callable running the case once with this provider; returns its output (and grads)."""
    if provider == "compile":
        # From an empty dynamo cache: cases share code objects (every conv-transpose case's stock
        # is reference.conv_transpose2d; a model class's forward serves several sizes and modes),
        # and past dynamo's recompile limit (8 per code object) a compiled call runs eagerly with
        # only a warning: the compile column would silently time eager.
        torch._dynamo.reset()
    if case.runner is not None:
        return case.runner(provider, device, dtype)
    if provider == "eager_cl":
        inputs = [channels_last(t) for t in inputs]
    if provider.startswith("genkern:"):
        backend = provider.split(":", 1)[1]
        fn = lambda *a: case.genkern(*a, backend=backend)
    elif provider == "compile":
        fn = torch.compile(case.stock)
    else:
        fn = case.stock
    if case.mode == "forward":

        def run():
            with torch.no_grad():
                return fn(*inputs)

        return run
    wrt = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    grad_holder = {}

    def run_fb():
        out = fn(*inputs)
        if "g" not in grad_holder:
            gen = torch.Generator(device="cpu").manual_seed(1)
            grad_holder["g"] = torch.randn(out.shape, generator=gen).to(out.device, out.dtype)
        grads = torch.autograd.grad(out, wrt, grad_holder["g"])
        return (out, *grads)

    run_fb.grad_output = grad_holder  # {"g": the output gradient}: the correctness check's handle
    return run_fb
