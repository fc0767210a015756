"""Tolerances and input makers shared by the tests, `genkern check` and the benchmarks.

Tolerances are data: one table per dtype. Results are compared with the float64 reference,
scaled by the reference's magnitude; a low-precision result is judged against stock PyTorch's
own error in the same dtype (at most LOW_PRECISION_FACTOR times it, plus a floor).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

# dtype -> (rtol, atol relative to max(1, max|reference|))
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-9, 1e-9),
    torch.float32: (1e-4, 2e-5),
    torch.bfloat16: (3e-2, 3e-2),
    torch.float16: (5e-3, 5e-3),
}
LOW_PRECISION_FACTOR = 2.0
LAYOUTS = ("contiguous", "channels_last", "noncontiguous")


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    return TOLERANCES[dtype]


def max_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max(1, max |expected|), in float64 (NaNs must match)."""
    a, e = actual.detach().double(), expected.detach().double()
    nan = torch.isnan(e)
    if not torch.equal(torch.isnan(a), nan):
        return float("inf")
    a, e = a.masked_fill(nan, 0), e.masked_fill(nan, 0)
    inf = torch.isinf(e)
    if not torch.equal(a[inf], e[inf]):
        return float("inf")
    a, e = a.masked_fill(inf, 0), e.masked_fill(inf, 0)
    if e.numel() == 0:
        return 0.0
    scale = max(1.0, e.abs().max().item())
    return (a - e).abs().max().item() / scale


def assert_close_to_reference(
    actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str = "result"
) -> None:
    """actual (computed in `dtype`) against the float64 reference, with the dtype's tolerance."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    rtol, atol = tolerance(dtype)
    scale = max(
        1.0,
        expected.detach().double().abs().nan_to_num(0, 0, 0).max().item()
        if expected.numel()
        else 1.0,
    )
    torch.testing.assert_close(
        actual.detach().double(),
        expected.detach().double(),
        rtol=rtol,
        atol=atol * scale,
        equal_nan=True,
        msg=lambda m: f"{what}: {m}",
    )


def assert_like_stock(
    actual: torch.Tensor,
    stock: torch.Tensor,
    expected: torch.Tensor,
    dtype: torch.dtype,
    what: str = "result",
) -> None:
    """A low-precision result is at most LOW_PRECISION_FACTOR x stock's error (plus a floor)."""
    err, stock_err = max_error(actual, expected), max_error(stock, expected)
    floor = tolerance(dtype)[1] * 0.1
    assert err <= LOW_PRECISION_FACTOR * stock_err + floor, (
        f"{what}: error {err:.3g} vs stock PyTorch {stock_err:.3g} in {dtype}"
    )


def make_tensor(
    shape: Sequence[int],
    dtype=torch.float32,
    device="cpu",
    layout="contiguous",
    requires_grad=False,
    low=-1.0,
    high=1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A uniform random tensor in [low, high) with the given memory layout.

    layout: "contiguous", "channels_last" (4-D only) or "noncontiguous" (a strided view).
    """
    shape = list(shape)
    if layout == "noncontiguous":  # every other element of a twice-as-wide tensor
        wide = [*shape[:-1], shape[-1] * 2] if shape else [2]
        base = torch.empty(wide, dtype=torch.float64).uniform_(low, high, generator=generator)
        base = base.to(device=device, dtype=dtype)
        t = base[..., ::2] if shape else base[0]
    else:
        t = torch.empty(shape, dtype=torch.float64).uniform_(low, high, generator=generator)
        t = t.to(device=device, dtype=dtype)
        if layout == "channels_last":
            t = t.contiguous(memory_format=torch.channels_last)
        elif layout != "contiguous":
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return t.requires_grad_(requires_grad)


def as_reference(t: torch.Tensor | None) -> torch.Tensor | None:
    """A float64 leaf copy of t (same values, same requires_grad) for the reference."""
    if t is None:
        return None
    return t.detach().double().requires_grad_(t.requires_grad)


def forward_and_grads(
    fn: Callable, inputs: Sequence[torch.Tensor | None], grad_out: torch.Tensor | None = None
):
    """Runs fn(*inputs); returns (output, grad_output, grads of every input requiring grad)."""
    out = fn(*inputs)
    wrt = [t for t in inputs if t is not None and t.requires_grad]
    if not wrt:
        return out, None, []
    if grad_out is None:
        grad_out = torch.randn(out.shape, dtype=torch.float64).to(out.device)
    grads = torch.autograd.grad(out, wrt, grad_out.to(out.dtype))
    return out, grad_out, list(grads)


def check_against_reference(
    fn: Callable,
    ref: Callable,
    inputs: Sequence[torch.Tensor | None],
    dtype: torch.dtype,
    what: str = "",
) -> None:
    """fn on `inputs` vs ref on their float64 copies: the output and every input gradient."""
    ref_inputs = [as_reference(t) for t in inputs]
    out, grad_out, grads = forward_and_grads(fn, inputs)
    ref_out, _, ref_grads = forward_and_grads(ref, ref_inputs, grad_out)
    assert_close_to_reference(out, ref_out, dtype, f"{what} forward")
    for i, (g, rg) in enumerate(zip(grads, ref_grads)):
        assert_close_to_reference(g, rg, dtype, f"{what} grad #{i}")
