"""`genkern check`: every op on every backend available here against the float64 reference,
forward and every gradient, per dtype. The user's self-test."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from genkern import backends, reference, testing

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


@dataclass
class CheckCase:
    op: str
    make_inputs: Callable[[torch.device, torch.dtype], list]  # tensors requiring grad (or None)
    fn: Callable  # fn(*inputs, backend=...)
    ref: Callable  # ref(*inputs), stock PyTorch


def _conv2d_inputs(device, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 9, 8, generator=g).to(device, dtype).requires_grad_()
    w = (torch.randn(8, 3, 3, 3, generator=g) * 0.3).to(device, dtype).requires_grad_()
    b = torch.randn(8, generator=g).to(device, dtype).requires_grad_()
    return [x.contiguous(memory_format=torch.channels_last).detach().requires_grad_(), w, b]


def _conv2d(backend=None):
    kw = dict(stride=2, padding=1, groups=2, activation="leaky_relu", negative_slope=0.2)
    if backend is None:
        return lambda x, w, b: reference.conv2d(x, w, b, **kw)
    import genkern

    return lambda x, w, b: genkern.ops.conv2d(x, w, b, **kw, backend=backend)


CASES: list[CheckCase] = [
    CheckCase("conv2d", _conv2d_inputs, lambda *a, backend: _conv2d(backend)(*a), _conv2d()),
]


# ---- transposed conv and linear (+ activation): issue 3 ----


def _conv_transpose2d_inputs(device, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 5, 4, generator=g).to(device, dtype)
    w = (torch.randn(6, 2, 4, 4, generator=g) * 0.3).to(device, dtype).requires_grad_()
    b = torch.randn(4, generator=g).to(device, dtype).requires_grad_()
    return [x.contiguous(memory_format=torch.channels_last).requires_grad_(), w, b]


def _linear_inputs(device, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 24, generator=g).to(device, dtype).requires_grad_()
    w = (torch.randn(17, 24, generator=g) * 0.2).to(device, dtype).requires_grad_()
    b = torch.randn(17, generator=g).to(device, dtype).requires_grad_()
    return [x, w, b]


def _fused_op(name: str, **kw):
    """(genkern fn taking backend=, stock reference fn) for op `name` with fixed arguments."""
    import genkern

    op, ref = getattr(genkern.ops, name), getattr(reference, name)
    return (lambda *a, backend: op(*a, **kw, backend=backend)), (lambda *a: ref(*a, **kw))


CASES += [
    CheckCase(
        "conv_transpose2d",
        _conv_transpose2d_inputs,
        *_fused_op(
            "conv_transpose2d", stride=2, padding=1, output_padding=1, groups=2, activation="relu"
        ),
    ),
    CheckCase("linear", _linear_inputs, *_fused_op("linear", activation="silu")),
]


def _errors(case: CheckCase, backend: str, device, dtype) -> tuple[float, float]:
    """(genkern's max error, stock PyTorch's max error in the same dtype) over output and grads."""
    inputs = case.make_inputs(device, dtype)
    ref_inputs = [testing.as_reference(t) for t in inputs]
    ref_out, grad_out, ref_grads = testing.forward_and_grads(case.ref, ref_inputs)
    fresh = lambda: [t.detach().requires_grad_(t.requires_grad) for t in inputs]
    out, _, grads = testing.forward_and_grads(
        lambda *a: case.fn(*a, backend=backend), fresh(), grad_out
    )
    stock, _, stock_grads = testing.forward_and_grads(case.ref, fresh(), grad_out)
    err = max(testing.max_error(a, e) for a, e in zip([out, *grads], [ref_out, *ref_grads]))
    serr = max(
        testing.max_error(a, e) for a, e in zip([stock, *stock_grads], [ref_out, *ref_grads])
    )
    return err, serr


def passes(err: float, stock_err: float, dtype: torch.dtype) -> bool:
    rtol, atol = testing.tolerance(dtype)
    if dtype in (torch.float32, torch.float64):
        return err <= rtol + atol
    return err <= testing.LOW_PRECISION_FACTOR * stock_err + 0.1 * atol


def run(device: torch.device, dtypes=DTYPES, ops: list[str] | None = None) -> list[dict]:
    rows = []
    for case in CASES:
        if ops and case.op not in ops:
            continue
        for backend in backends.BACKENDS:
            for dtype in dtypes:
                if backends.unavailable_reason(backend, device, dtype) is not None:
                    continue
                try:
                    err, serr = _errors(case, backend, device, dtype)
                    ok, msg = passes(err, serr, dtype), ""
                except Exception as exc:  # reported, never fatal
                    err = serr = float("nan")
                    ok, msg = False, f"{type(exc).__name__}: {exc}"[:200]
                rows.append(
                    dict(
                        op=case.op,
                        backend=backend,
                        dtype=str(dtype)[6:],
                        ok=ok,
                        max_error=err,
                        stock_error=serr,
                        message=msg,
                    )
                )
    return rows


def table(rows: list[dict]) -> str:
    dtypes = [str(d)[6:] for d in DTYPES]
    cells: dict = {}
    for r in rows:
        mark = "ok" if r["ok"] else "FAIL"
        cells[(r["op"], r["backend"], r["dtype"])] = f"{mark} {r['max_error']:.1e}"
    lines = ["| op | backend | " + " | ".join(dtypes) + " |", "|---|---|" + "---|" * len(dtypes)]
    for op, backend in dict.fromkeys((r["op"], r["backend"]) for r in rows):
        lines.append(
            f"| {op} | {backend} | "
            + " | ".join(cells.get((op, backend, d), "-") for d in dtypes)
            + " |"
        )
    fails = [r for r in rows if not r["ok"]]
    lines.append("")
    lines.append(
        f"{len(rows) - len(fails)} passed, {len(fails)} failed "
        "(max error relative to max(1, |reference|), forward and every gradient)"
    )
    lines += [
        f"- FAIL {r['op']} {r['backend']} {r['dtype']}: error {r['max_error']:.3g} "
        f"(stock {r['stock_error']:.3g}) {r['message']}"
        for r in fails
    ]
    return "\n".join(lines)
