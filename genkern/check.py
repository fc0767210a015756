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


def _rand(g, shape, device, dtype, scale=1.0, low=None, grad=True):
    t = torch.rand(shape, generator=g) if low is not None else torch.randn(shape, generator=g)
    t = (t * (1 - low) + low) if low is not None else t * scale
    return t.to(device, dtype).requires_grad_(grad)


def _conv2d_inputs(device, dtype):
    g = torch.Generator().manual_seed(0)
    x = _rand(g, (2, 6, 9, 8), device, dtype, grad=False)
    return [
        x.contiguous(memory_format=torch.channels_last).requires_grad_(),
        _rand(g, (8, 3, 3, 3), device, dtype, 0.3),
        _rand(g, (8,), device, dtype),
    ]


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


def _bn_inputs(device, dtype):
    g = torch.Generator().manual_seed(0)
    return [
        _rand(g, (4, 6, 5, 3), device, dtype, 2.0),
        _rand(g, (6,), device, dtype),
        _rand(g, (6,), device, dtype),
    ]


def _image_input(shape):
    def make(device, dtype):
        return [_rand(torch.Generator().manual_seed(0), shape, device, dtype)]

    return make


def _logits(*shapes):
    def make(device, dtype):
        g = torch.Generator().manual_seed(0)
        return [_rand(g, s, device, dtype, 3.0) for s in shapes]

    return make


def _vae_inputs(device, dtype):
    g = torch.Generator().manual_seed(0)
    return [
        _rand(g, (4, 1, 6, 6), device, dtype, 2.0),
        _rand(g, (4, 1, 6, 6), device, dtype, low=0.0, grad=False),
        _rand(g, (4, 5), device, dtype),
        _rand(g, (4, 5), device, dtype, 0.5),
    ]


def _reparam_inputs(device, dtype):
    g = torch.Generator().manual_seed(0)
    return [
        _rand(g, (4, 5), device, dtype),
        _rand(g, (4, 5), device, dtype, 0.5),
        _rand(g, (4, 5), device, dtype, grad=False),
    ]


def _bn(x, w, b, backend=None):
    args = (x, None, None, w, b, True, 0.1, 1e-5, "leaky_relu", 0.2)
    if backend is None:
        return reference.batch_norm(*args)
    import genkern

    return genkern.ops.batch_norm(*args, backend=backend)


def _reparam(mu, logvar, eps, backend=None):
    if backend is None:
        return reference.reparameterize(mu, logvar, eps)
    import genkern

    return genkern.ops.reparameterize(mu, logvar, eps=eps, backend=backend)


CASES: list[CheckCase] = [
    CheckCase(
        "conv2d",
        _conv2d_inputs,
        *_fused_op(
            "conv2d", stride=2, padding=1, groups=2, activation="leaky_relu", negative_slope=0.2
        ),
    ),
    CheckCase(
        "conv_transpose2d",
        _conv_transpose2d_inputs,
        *_fused_op(
            "conv_transpose2d", stride=2, padding=1, output_padding=1, groups=2, activation="relu"
        ),
    ),
    CheckCase("linear", _linear_inputs, *_fused_op("linear", activation="silu")),
    CheckCase("batch_norm", _bn_inputs, _bn, _bn),
    CheckCase(
        "max_pool2d",
        _image_input((2, 3, 9, 7)),
        *_fused_op("max_pool2d", kernel_size=3, stride=2, padding=1, ceil_mode=True),
    ),
    CheckCase(
        "avg_pool2d",
        _image_input((2, 3, 9, 7)),
        *_fused_op("avg_pool2d", kernel_size=2, count_include_pad=False, padding=1),
    ),
    CheckCase(
        "upsample_nearest2d",
        _image_input((2, 3, 5, 4)),
        *_fused_op("upsample_nearest2d", scale_factor=2),
    ),
    CheckCase(
        "discriminator_loss",
        _logits((16, 1, 3, 3), (37,)),
        *_fused_op("discriminator_loss", kind="bce"),
    ),
    CheckCase("generator_loss", _logits((64,)), *_fused_op("generator_loss", kind="hinge")),
    CheckCase("vae_loss", _vae_inputs, *_fused_op("vae_loss", recon_loss="bce", beta=0.5)),
    CheckCase("reparameterize", _reparam_inputs, _reparam, _reparam),
]


def _errors(case: CheckCase, backend: str, device, dtype) -> tuple[float, float]:
    """(genkern's max error, stock PyTorch's max error in the same dtype) over output and grads."""
    torch.manual_seed(0)  # the random grad_output
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
