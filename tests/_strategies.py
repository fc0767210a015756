"""Hypothesis strategies shared by the fuzz tests (tests/test_fuzz_*.py).

An input is drawn as an `Arg`: a leaf tensor (what gradients are taken with respect to) and a
`view` that turns the leaf into the tensor the op sees, so every memory layout torch accepts is
covered with exact gradients: contiguous, channels_last, a non-contiguous slice, a transposed
view, and an expanded (stride-0) view. Values are drawn from a seed and a kind: normal, large
magnitude, subnormals mixed in, exact zeros mixed in, and ties (a coarse grid, for max-pool
windows and exact activation kinks in both the dtype and float64).

Shapes stay tiny: the Triton interpreter runs every program instance in Python.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from hypothesis import strategies as st

from genkern import ops, reference, testing

VALUE_KINDS = ("normal", "large", "subnormal", "zeros", "ties")
LAYOUTS_4D = ("contiguous", "channels_last", "noncontiguous", "transposed", "expanded")
LAYOUTS_ND = ("contiguous", "noncontiguous", "transposed", "expanded")
ACTIVATIONS = (None, "relu", "leaky_relu", "tanh", "sigmoid", "silu")


@dataclasses.dataclass
class Arg:
    """A leaf tensor and the view of it the op is called with."""

    leaf: torch.Tensor
    view_fn: Callable[[torch.Tensor], torch.Tensor]
    layout: str
    kind: str

    def view(self) -> torch.Tensor:
        return self.view_fn(self.leaf)

    def reference(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(float64 leaf copy, its view made contiguous): the same values, for the reference.

        Contiguous: stock torch 2.13's CPU batch_norm backward in float64 reads a strided
        weight as if it were contiguous (a wrong input gradient); the spec must not."""
        leaf = self.leaf.detach().double().requires_grad_(self.leaf.requires_grad)
        return leaf, self.view_fn(leaf).contiguous()

    def __repr__(self) -> str:  # what hypothesis prints for a falsifying example
        return (
            f"Arg(shape={list(self.view().shape)}, dtype={self.leaf.dtype}, "
            f"layout={self.layout}, kind={self.kind})"
        )


# Set by a test whose backend cannot take subnormals of a dtype: the Triton interpreter converts
# bfloat16 subnormals to float32 wrongly (-6.34e-39 reads as -9.18e-40; a GPU converts exactly).
NO_SUBNORMALS: set = set()


def values(shape, dtype, kind: str, seed: int, low=None, high=None) -> torch.Tensor:
    """A float64 tensor of `shape` with values of `kind`, rounded to `dtype` and back."""
    if kind == "subnormal" and dtype in NO_SUBNORMALS:
        kind = "zeros"
    g = torch.Generator().manual_seed(seed)
    if low is not None:
        t = torch.empty(shape, dtype=torch.float64).uniform_(low, high, generator=g)
        if kind == "ties":
            t = (t * 4).round() / 4
            t = t.clamp(low, high)
        elif kind == "zeros":
            t = t * (torch.rand(shape, generator=g, dtype=torch.float64) > 0.3)
            t = t.clamp(low, high)
        return t.to(dtype)
    t = torch.randn(shape, generator=g, dtype=torch.float64)
    if kind == "large":
        big = 3e3 if dtype in (torch.float16,) else 1e4
        t = t * big
    elif kind == "subnormal":
        tiny = torch.finfo(dtype).tiny
        sub = torch.rand(shape, generator=g, dtype=torch.float64) * tiny * 0.9
        sign = torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0).double()
        mask = torch.rand(shape, generator=g) < 0.5
        t = torch.where(mask, sub * sign, t)
    elif kind == "zeros":
        t = t * (torch.rand(shape, generator=g, dtype=torch.float64) > 0.4)
    elif kind == "ties":
        t = (t * 2).round() / 2
    return t.to(dtype)


def make_arg(
    shape: Sequence[int],
    dtype: torch.dtype,
    layout: str,
    kind: str,
    seed: int,
    requires_grad: bool = True,
    low=None,
    high=None,
) -> Arg:
    """An Arg whose view has `shape` and `layout`, values of `kind` (see `values`)."""
    shape = list(shape)
    nd = len(shape)
    if layout == "channels_last" and nd == 4:
        leaf = values(shape, dtype, kind, seed, low, high).contiguous(
            memory_format=torch.channels_last
        )
        view_fn = lambda t: t
    elif layout == "noncontiguous" and nd >= 1:
        wide = [*shape[:-1], shape[-1] * 2 + 1]
        leaf = values(wide, dtype, kind, seed, low, high)
        view_fn = lambda t: t[..., 1::2]
    elif layout == "transposed" and nd >= 2:
        tshape = [*shape[:-2], shape[-1], shape[-2]]
        leaf = values(tshape, dtype, kind, seed, low, high)
        view_fn = lambda t: t.transpose(-1, -2)
    elif layout == "expanded" and nd >= 1:
        d = 0 if nd == 1 or shape[0] > 1 else nd - 1  # expand a size-1 leading (or last) dim
        small = list(shape)
        small[d] = 1
        leaf = values(small, dtype, kind, seed, low, high)
        view_fn = lambda t: t.expand(shape)
    else:
        leaf = values(shape, dtype, kind, seed, low, high)
        view_fn = lambda t: t
        layout = "contiguous"
    return Arg(leaf.requires_grad_(requires_grad), view_fn, layout, kind)


@st.composite
def args(
    draw,
    shape,
    dtype,
    layouts=LAYOUTS_ND,
    kinds=VALUE_KINDS,
    requires_grad=None,
    low=None,
    high=None,
) -> Arg:
    """An Arg of `shape` (4-D shapes may also be channels_last) with a drawn layout and kind."""
    layouts = tuple(layouts)
    if len(shape) == 4 and "channels_last" not in layouts and layouts == LAYOUTS_ND:
        layouts = LAYOUTS_4D
    layout = draw(st.sampled_from(layouts))
    kind = draw(st.sampled_from(kinds))
    seed = draw(st.integers(0, 2**31 - 1))
    rg = draw(st.booleans()) if requires_grad is None else requires_grad
    return make_arg(shape, dtype, layout, kind, seed, rg, low, high)


def dtypes(backend: str):
    """The dtypes fuzzed on a backend: float32 and float64 (where it runs), bfloat16 sometimes."""
    if backend == "triton":
        return st.sampled_from((torch.float32, torch.float32, torch.bfloat16))
    return st.sampled_from((torch.float32, torch.float64, torch.float64, torch.bfloat16))


activations = st.sampled_from(ACTIVATIONS)
negative_slopes = st.sampled_from((0.01, 0.2, 0.0, -0.5, 1.5))


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


# A 2-value batch_norm with a weight of 1e4 loses ~4 digits to cancellation in any float32
# formula: genkern's fused backward (kb * x + kc) measured 2.2x the composite's error there.
ILL_CONDITIONED_FACTOR = 4.0


def _check(actual, expected, stock, dtype, what, atol_extra=0.0):
    """actual vs the float64 reference with the dtype's tolerance; where that fails, the
    composite's own error in the same dtype (an ill-conditioned case: a batch_norm of two
    values, a cancelling sum) is the bar: at most ILL_CONDITIONED_FACTOR x it, plus a floor.
    `atol_extra`: a known, documented error bound of the op on these inputs (see its test)."""
    try:
        testing.assert_close_to_reference(actual, expected, dtype, what)
    except AssertionError:
        if (
            atol_extra
            and testing.max_error(actual, expected)
            * max(1.0, expected.detach().double().abs().nan_to_num(0, 0, 0).max().item())
            <= atol_extra + testing.tolerance(dtype)[1]
        ):
            return
        s = stock()
        if s is None:
            raise
        # ill-conditioned (the dtype's tolerance fails): within ILL_CONDITIONED_FACTOR x the
        # composite's own error in the dtype (plus a floor)
        err, stock_err = testing.max_error(actual, expected), testing.max_error(s, expected)
        floor = testing.tolerance(dtype)[1] * 0.1
        assert err <= ILL_CONDITIONED_FACTOR * stock_err + floor, (
            f"{what}: error {err:.3g} vs stock PyTorch {stock_err:.3g} in {dtype}"
        )


def compare(
    fn: Callable[..., object],
    ref: Callable[..., object],
    inputs: Sequence[Arg | None],
    dtype: torch.dtype,
    what: str,
    grad_seed: int = 0,
    extra: Callable[[], list[tuple[torch.Tensor, torch.Tensor]]] | None = None,
    forward_atol_extra: float = 0.0,
    grad_atol_per_unit: float = 0.0,
) -> None:
    """fn on the inputs' views vs ref on float64 copies of the same views: every output, and the
    gradient of every leaf that requires grad (with a random grad_output per output).

    `extra`, if given, returns more (actual, expected) pairs to compare after the call (e.g. the
    running statistics batch_norm updates). `forward_atol_extra` / `grad_atol_per_unit`: known
    rounding-error bounds of the op's outputs / of its gradients per unit of grad_output."""
    views = [None if a is None else a.view() for a in inputs]
    refs = [None if a is None else a.reference() for a in inputs]
    out = _as_tuple(fn(*views))
    ref_out = _as_tuple(ref(*[None if r is None else r[1] for r in refs]))
    assert len(out) == len(ref_out)
    leaves = [a.leaf for a in inputs if a is not None and a.leaf.requires_grad]
    ref_leaves = [r[0] for a, r in zip(inputs, refs) if a is not None and a.leaf.requires_grad]
    outs = [(o, r) for o, r in zip(out, ref_out) if r.requires_grad]
    for i, (o, _) in enumerate(outs):
        assert o.requires_grad, f"{what} output #{i} does not require grad, the reference's does"
    g = torch.Generator().manual_seed(grad_seed)
    gos = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype) for o, _ in outs]
    cache = {}

    def stock():
        """The reference composite run in `dtype` itself: (outputs, grads), computed once."""
        if "v" not in cache:
            leaves_s = [
                None if a is None else a.leaf.detach().clone().requires_grad_(a.leaf.requires_grad)
                for a in inputs
            ]
            vs = [None if a is None else a.view_fn(t) for a, t in zip(inputs, leaves_s)]
            so = _as_tuple(ref(*vs))
            wrt = [t for t in leaves_s if t is not None and t.requires_grad]
            sg = []
            if wrt and outs:
                so_g = [o for o in so if o.requires_grad]
                sg = torch.autograd.grad(so_g, wrt, gos, allow_unused=True)
            cache["v"] = (so, sg)
        return cache["v"]

    for i, (o, r) in enumerate(zip(out, ref_out)):
        assert o.dtype == r.dtype or r.dtype == torch.float64, f"{what} output #{i} dtype"
        _check(
            o,
            r,
            lambda i=i: stock() and stock()[0][i],
            dtype,
            f"{what} forward #{i}",
            forward_atol_extra,
        )
    if extra is not None:
        for i, (a, e) in enumerate(extra()):
            testing.assert_close_to_reference(a, e, dtype, f"{what} extra #{i}")
    if not leaves or not outs:
        return
    grads = torch.autograd.grad([o for o, _ in outs], leaves, gos, allow_unused=True)
    ref_grads = torch.autograd.grad(
        [r for _, r in outs], ref_leaves, [go.double() for go in gos], allow_unused=True
    )
    for i, (gr, rg) in enumerate(zip(grads, ref_grads)):
        if rg is None:
            assert gr is None or not gr.any(), f"{what} grad #{i}: nonzero, expected none"
            continue
        assert gr is not None, f"{what} grad #{i}: missing"
        # a known bound of the gradient's rounding error per unit of grad_output (see its test)
        atol_extra = grad_atol_per_unit * max(float(go.abs().max()) for go in gos)
        _check(
            gr, rg, lambda i=i: stock() and stock()[1][i], dtype, f"{what} grad #{i}", atol_extra
        )


# ---- one fixed call of every op, for the special-value, mutation, determinism, concurrency and
# compile tests: name -> make(dtype, big, generator) -> (inputs, call(backend, *inputs), ref)


def _t(shape, dtype, g, low=-1.0, high=1.0, rg=True):
    t = torch.empty(shape, dtype=torch.float64).uniform_(low, high, generator=g)
    return t.to(dtype).requires_grad_(rg)


def _case_conv2d(dtype, big, g):
    s, c = (32, 16) if big else (5, 3)
    ins = [_t([4, c, s, s], dtype, g), _t([c + 1, c, 3, 3], dtype, g), _t([c + 1], dtype, g)]
    kw = dict(padding=1, activation="relu")
    return (
        ins,
        lambda be, x, w, b: ops.conv2d(x, w, b, **kw, backend=be),
        lambda x, w, b: reference.conv2d(x, w, b, **kw),
    )


def _case_conv_transpose2d(dtype, big, g):
    s, c = (16, 16) if big else (4, 3)
    ins = [_t([4, c, s, s], dtype, g), _t([c, 5, 3, 3], dtype, g), _t([5], dtype, g)]
    kw = dict(stride=2, padding=1, output_padding=1, activation="leaky_relu", negative_slope=0.2)
    return (
        ins,
        lambda be, x, w, b: ops.conv_transpose2d(x, w, b, **kw, backend=be),
        lambda x, w, b: reference.conv_transpose2d(x, w, b, **kw),
    )


def _case_linear(dtype, big, g):
    m, k = (512, 256) if big else (5, 7)
    ins = [_t([m, k], dtype, g), _t([6 if not big else 128, k], dtype, g)]
    ins.append(_t([ins[1].shape[0]], dtype, g))
    kw = dict(activation="tanh")
    return (
        ins,
        lambda be, x, w, b: ops.linear(x, w, b, **kw, backend=be),
        lambda x, w, b: reference.linear(x, w, b, **kw),
    )


def _case_batch_norm(dtype, big, g, training=True):
    n, c, s = (8, 16, 32) if big else (2, 3, 4)
    ins = [_t([n, c, s, s], dtype, g), _t([c], dtype, g), _t([c], dtype, g)]
    st = torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype
    rm, rv = torch.zeros(c, dtype=st), torch.ones(c, dtype=st)
    kw = dict(training=training, momentum=0.1, eps=1e-5, activation="relu")
    return (
        ins,
        lambda be, x, w, b: ops.batch_norm(x, rm.clone(), rv.clone(), w, b, **kw, backend=be),
        lambda x, w, b: reference.batch_norm(
            x, rm.clone().to(x.dtype), rv.clone().to(x.dtype), w, b, **kw
        ),
    )


def _case_pool(op, kw):
    def make(dtype, big, g):
        n, c, s = (8, 16, 32) if big else (2, 3, 6)
        ins = [_t([n, c, s, s], dtype, g)]
        fn = getattr(ops, op)
        rf = getattr(reference, op, None) or getattr(F, op)
        return ins, lambda be, x: fn(x, **kw, backend=be), lambda x: rf(x, **kw)

    return make


def _case_loss(op, kw, nargs):
    def make(dtype, big, g):
        n = 200_000 if big else 9
        ins = [_t([n], dtype, g, -3, 3) for _ in range(nargs)]
        fn, rf = getattr(ops, op), getattr(reference, op)
        return ins, lambda be, *a: fn(*a, **kw, backend=be), lambda *a: rf(*a, **kw)

    return make


def _case_vae(recon_loss, logits):
    def make(dtype, big, g):
        n, k = (4, 50_000) if big else (2, 6)
        lo, hi = (0.01, 0.99) if recon_loss == "bce" and not logits else (-3, 3)
        ins = [_t([n, k], dtype, g, lo, hi), _t([n, k], dtype, g, 0, 1)]
        ins += [_t([n, 8], dtype, g), _t([n, 8], dtype, g)]
        kw = dict(recon_loss=recon_loss, logits=logits, beta=0.5, reduction="mean")
        return (
            ins,
            lambda be, *a: ops.vae_loss(*a, **kw, backend=be),
            lambda *a: reference.vae_loss(*a, **kw),
        )

    return make


def _case_reparameterize(dtype, big, g):
    n = 200_000 if big else 9
    ins = [_t([n], dtype, g), _t([n], dtype, g), _t([n], dtype, g)]
    return (
        ins,
        lambda be, m, lv, e: ops.reparameterize(m, lv, e, backend=be),
        reference.reparameterize,
    )


OP_CASES = {
    "conv2d": _case_conv2d,
    "conv_transpose2d": _case_conv_transpose2d,
    "linear": _case_linear,
    "batch_norm_train": _case_batch_norm,
    "batch_norm_eval": lambda d, b, g: _case_batch_norm(d, b, g, training=False),
    "max_pool2d": _case_pool("max_pool2d", dict(kernel_size=3, stride=2, padding=1)),
    "avg_pool2d": _case_pool(
        "avg_pool2d", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)
    ),
    "upsample_nearest2d": _case_pool("upsample_nearest2d", dict(scale_factor=2)),
    **{
        f"discriminator_loss_{k}": _case_loss("discriminator_loss", dict(kind=k), 2)
        for k in ("bce", "hinge", "wgan", "lsgan")
    },
    **{
        f"generator_loss_{k}": _case_loss("generator_loss", dict(kind=k), 1)
        for k in ("bce", "hinge", "wgan", "lsgan")
    },
    "vae_loss_bce_logits": _case_vae("bce", True),
    "vae_loss_bce_probs": _case_vae("bce", False),
    "vae_loss_mse": _case_vae("mse", True),
    "reparameterize": _case_reparameterize,
}
