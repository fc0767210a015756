"""The CPU backend's eager fast paths (csrc/cpu/eager_autograd.h: one C++ call, a C++ autograd
Function) against the registered custom ops they bypass: the same kernels, so the same bits, for
outputs, every gradient, running statistics and output layouts."""

import pytest
import torch
from torch import nn

import genkern
from genkern import backends
from genkern.ops import _fused

pytestmark = pytest.mark.skipif(
    backends.unavailable_reason("cpu", torch.device("cpu"), torch.float64) is not None,
    reason="the C++ extension genkern._C is not built",
)


def _conv2d(x, w, b, act):
    return genkern.ops.conv2d(x, w, b, stride=2, padding=1, activation=act, backend="cpu")


def _conv_t(x, w, b, act):
    return genkern.ops.conv_transpose2d(
        x, w, b, stride=2, padding=1, output_padding=1, activation=act, backend="cpu"
    )


def _linear(x, w, b, act):
    return genkern.ops.linear(x, w, b, activation=act, backend="cpu")


# (name, op, x shape, weight shape, bias size)
GEMM_OPS = [
    ("conv2d", _conv2d, (2, 3, 7, 6), (4, 3, 3, 3), 4),
    ("conv_transpose2d", _conv_t, (2, 4, 5, 4), (4, 3, 3, 3), 3),
    ("linear", _linear, (3, 2, 5), (6, 5), 6),
]
ACTS = [None, "relu", "leaky_relu", "silu", "tanh"]


def _run(fast, op, tensors, act, monkeypatch):
    monkeypatch.setattr(_fused, "FAST_EAGER", fast)
    leaves = [
        None if t is None else t.detach().clone().requires_grad_(t.requires_grad) for t in tensors
    ]
    y = op(*leaves, act)
    if y.requires_grad:
        y.backward(torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y))
    return y, [None if t is None else t.grad for t in leaves]


def _op_node(y) -> str:
    """The name of the autograd node that made y, under any views."""
    node = y.grad_fn
    while node.name().startswith(("View", "Unsafe", "Reshape")):
        node = node.next_functions[0][0]
    return node.name()


def _assert_same(a, b):
    assert (a is None) == (b is None)
    if a is not None:
        assert a.stride() == b.stride()
        assert torch.equal(a, b)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("grads", ["all", "weight_only", "none", "no_bias"])
@pytest.mark.parametrize("name,op,xs,ws,bs", GEMM_OPS, ids=[o[0] for o in GEMM_OPS])
def test_gemm_fast_path_matches_custom_op(name, op, xs, ws, bs, grads, layout, act, monkeypatch):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(xs, generator=g, dtype=torch.float64)
    w = torch.randn(ws, generator=g, dtype=torch.float64)
    b = None if grads == "no_bias" else torch.randn(bs, generator=g, dtype=torch.float64)
    if layout == "channels_last" and x.dim() == 4:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_(grads in ("all", "no_bias"))
    w.requires_grad_(grads != "none")
    if b is not None:
        b.requires_grad_(grads == "all")
    y_fast, g_fast = _run(True, op, [x, w, b], act, monkeypatch)
    y_slow, g_slow = _run(False, op, [x, w, b], act, monkeypatch)
    _assert_same(y_fast, y_slow)
    for a, c in zip(g_fast, g_slow):
        assert (a is None) == (c is None)
        if a is not None:
            assert torch.equal(a, c)
    if y_fast.requires_grad:  # the fast path really ran: a C++ node, not the custom op's
        assert "CppNode" in _op_node(y_fast) and "CppNode" not in _op_node(y_slow)


def _bn(x, w, b, rm, rv, training, act):
    return genkern.ops.batch_norm(
        x, rm, rv, w, b, training=training, momentum=0.3, activation=act, backend="cpu"
    )


@pytest.mark.parametrize("act", [None, "relu", "leaky_relu", "silu"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "noncontiguous"])
def test_batch_norm_fast_path_matches_custom_op(layout, affine, training, act, monkeypatch):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, 4, 6, generator=g, dtype=torch.float64) * 2 + 1
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "noncontiguous":
        x = x[..., ::2]
    x.requires_grad_()
    w = torch.rand(5, generator=g, dtype=torch.float64).requires_grad_() if affine else None
    b = torch.randn(5, generator=g, dtype=torch.float64).requires_grad_() if affine else None
    rm0, rv0 = torch.randn(5, dtype=torch.float64), torch.rand(5, dtype=torch.float64) + 0.5
    out = {}
    for fast in (True, False):
        monkeypatch.setattr(_fused, "FAST_EAGER", fast)
        rm, rv = rm0.clone(), rv0.clone()
        leaves = [t if t is None else t.detach().clone().requires_grad_() for t in (x, w, b)]
        y = _bn(*leaves[:1], leaves[1], leaves[2], rm, rv, training, act)
        y.backward(torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y))
        out[fast] = (y, [t if t is None else t.grad for t in leaves], rm, rv)
    (yf, gf, rmf, rvf), (ys, gs, rms, rvs) = out[True], out[False]
    _assert_same(yf, ys)
    for a, c in zip(gf, gs):
        _assert_same(a, c)
    assert torch.equal(rmf, rms) and torch.equal(rvf, rvs)
    if not training:
        assert torch.equal(rmf, rm0) and torch.equal(rvf, rv0)


def test_batch_norm_fast_path_without_grad_updates_stats(monkeypatch):
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    stats = {}
    for fast in (True, False):
        monkeypatch.setattr(_fused, "FAST_EAGER", fast)
        rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
        with torch.no_grad():
            y = genkern.ops.batch_norm(x, rm, rv, training=True, activation="relu", backend="cpu")
        stats[fast] = (y, rm, rv)
    for a, c in zip(stats[True], stats[False]):
        assert torch.equal(a, c)
    assert not torch.equal(stats[True][1], torch.zeros(3, dtype=torch.float64))


def test_fast_path_not_taken_for_subclasses_and_modes(monkeypatch):
    class Sub(torch.Tensor):
        pass

    x = torch.randn(2, 5, dtype=torch.float64).as_subclass(Sub).requires_grad_()
    w = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    y = genkern.ops.linear(x, w, backend="cpu")
    assert "CppNode" not in _op_node(y)
    assert _fused.fast_eager(torch.randn(1), torch.nn.Parameter(torch.randn(1)))
    with torch.overrides.TorchFunctionMode():
        assert not _fused.eager()


POOL_CALLS = [
    ("max_pool2d", lambda x: genkern.ops.max_pool2d(x, 3, 2, 1, return_indices=True)),
    ("avg_pool2d", lambda x: genkern.ops.avg_pool2d(x, 3, 2, 1, count_include_pad=False)),
    ("upsample", lambda x: genkern.ops.upsample_nearest2d(x, scale_factor=1.5)),
]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("name,call", POOL_CALLS, ids=[c[0] for c in POOL_CALLS])
def test_pool_no_grad_path_matches_custom_op(name, call, layout, monkeypatch):
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    outs = {}
    for fast in (True, False):
        monkeypatch.setattr(_fused, "FAST_EAGER", fast)
        with genkern.use_backend("cpu"), torch.no_grad():
            out = call(x)
        outs[fast] = out if isinstance(out, tuple) else (out,)
    for a, c in zip(outs[True], outs[False]):
        _assert_same(a, c)


# ---- autocast: conv and linear run in the autocast dtype, BatchNorm takes float32 parameters ---


AUTOCAST_CALLS = [
    (
        "conv2d",
        lambda x, w, b: genkern.ops.conv2d(x, w, b, padding=1, activation="relu"),
        (2, 3, 6, 6),
        (4, 3, 3, 3),
    ),
    (
        "conv_transpose2d",
        lambda x, w, b: genkern.ops.conv_transpose2d(x, w, b, stride=2, activation="tanh"),
        (2, 3, 4, 4),
        (3, 4, 2, 2),
    ),
    ("linear", lambda x, w, b: genkern.ops.linear(x, w, b, activation="silu"), (5, 3), (4, 3)),
]


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("name,call,xs,ws", AUTOCAST_CALLS, ids=[c[0] for c in AUTOCAST_CALLS])
def test_autocast_runs_conv_and_linear_in_its_dtype(name, call, xs, ws, fast, monkeypatch):
    monkeypatch.setattr(_fused, "FAST_EAGER", fast)
    x, w = torch.randn(xs), torch.randn(ws, requires_grad=True)
    b = torch.randn(ws[1] if name == "conv_transpose2d" else ws[0], requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = call(x, w, b)
        stock_conv = {"conv2d": torch.nn.functional.conv2d, "linear": torch.nn.functional.linear}
        if name in stock_conv:  # the same dtype rule as stock autocast
            assert stock_conv[name](x, w, b).dtype == y.dtype
    assert y.dtype == torch.bfloat16
    # the same call on bfloat16 copies, recording a graph like y's (a call that records none may
    # take the packed-weight path, whose fused post-op rounds differently on CPUs that pack bf16)
    ref = call(x.bfloat16(), w.detach().bfloat16().requires_grad_(), b.detach().bfloat16())
    assert torch.equal(y, ref)
    y.float().sum().backward()
    assert w.grad.dtype == torch.float32 and b.grad.dtype == torch.float32
    assert call(x, w, b).dtype == torch.float32  # outside autocast: as given


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_batch_norm_takes_float32_parameters_with_a_16bit_input(backend):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, 5, 5, generator=g).bfloat16().requires_grad_()
    w = (torch.rand(3, generator=g) + 0.5).requires_grad_()
    b = torch.randn(3, generator=g).requires_grad_()
    rm, rv = torch.zeros(3), torch.ones(3)
    y = genkern.ops.batch_norm(x, rm, rv, w, b, True, activation="relu", backend=backend)
    y.float().sum().backward()
    xs, ws, bs = (t.detach().clone().requires_grad_() for t in (x, w, b))
    rms, rvs = torch.zeros(3), torch.ones(3)
    ys = torch.relu(torch.nn.functional.batch_norm(xs, rms, rvs, ws, bs, True))
    ys.float().sum().backward()
    assert y.dtype == ys.dtype == torch.bfloat16 and w.grad.dtype == torch.float32
    torch.testing.assert_close(y.float(), ys.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(w.grad, ws.grad, rtol=1e-3, atol=1e-3)  # float32 sums, not bf16
    torch.testing.assert_close(b.grad, bs.grad, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(rm, rms) and torch.testing.assert_close(rv, rvs)


@pytest.mark.parametrize("op", ["conv2d", "conv_transpose2d"])
def test_conv_backward_overwrites_only_a_gradient_nobody_else_holds(op):
    """The C++ node writes the activation's backward over the output gradient it was handed
    when nobody else holds it; a gradient a hook or retain_grad keeps stays as it was."""
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    w = torch.randn(*((3, 4) if op == "conv_transpose2d" else (4, 3)), 3, 3, requires_grad=True)
    y = getattr(genkern.ops, op)(x, w, activation="leaky_relu", negative_slope=0.2, backend="cpu")
    assert "CppNode" in y.grad_fn.name()
    kept = []
    y.register_hook(kept.append)
    y.retain_grad()
    (y * 3).sum().backward()
    assert torch.equal(kept[0], torch.full_like(y, 3.0))
    assert torch.equal(y.grad, torch.full_like(y, 3.0))
    stock = torch.nn.functional.leaky_relu(getattr(torch.nn.functional, op)(x, w), 0.2)
    gx, gw = torch.autograd.grad((stock * 3).sum(), [x, w])
    torch.testing.assert_close(x.grad, gx)
    torch.testing.assert_close(w.grad, gw)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_backward_overwrites_only_a_gradient_nobody_else_holds(layout):
    # The second conv's input gradient reaches the first conv's backward owned by nobody else:
    # its activation backward writes g over it, the bias sums fused. A gradient the caller holds
    # is left as it was. Both against the float64 reference.
    from _helpers import check_against_reference_unmodified

    from genkern import reference

    torch.manual_seed(0)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=fmt).requires_grad_()
    params = [torch.randn(5, 3, 3, 3), torch.randn(5), torch.randn(4, 5, 3, 3), torch.randn(4)]
    params = [p.requires_grad_() for p in params]

    def net(conv, backend=None):
        kw = {} if backend is None else {"backend": backend}

        def f(x, w1, b1, w2, b2):
            h = conv(x, w1, b1, padding=1, activation="leaky_relu", negative_slope=0.2, **kw)
            return conv(h, w2, b2, padding=1, activation="silu", **kw)

        return f

    inputs = [x, *params]
    fn, ref = net(genkern.ops.conv2d, "cpu"), net(reference.conv2d)
    check_against_reference_unmodified(fn, ref, inputs, torch.float32, "two convs")
    y = fn(*inputs)
    g = torch.randn_like(y)
    held = g.clone()
    torch.autograd.grad(y, inputs, g)
    assert torch.equal(g, held)


@pytest.mark.parametrize(
    "make,shape",
    [
        (lambda M: M(16, 32, 4, 1, 0), (2, 16, 1, 1)),  # a DCGAN generator's head
        (lambda M: M(32, 8, 4, 1, 0), (2, 32, 4, 4)),  # a discriminator's tail, onto 1x1
    ],
    ids=["convT_head", "conv_tail"],
)
def test_outputs_take_in_place_ops_as_stock_does(make, shape):
    # found by the fuzz: the C++ Functions returned a GEMM result's view, and autograd refused
    # relu_() / ReLU(inplace=True) / += on it ("is a view and is being modified inplace")
    is_t = shape[2] == 1
    stock = make(nn.ConvTranspose2d if is_t else nn.Conv2d).double()
    ours = make(genkern.nn.ConvTranspose2d if is_t else genkern.nn.Conv2d).double()
    ours.load_state_dict(stock.state_dict())
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    for in_place in (torch.Tensor.relu_, lambda y: y.add_(1)):
        grads = []
        for m in (stock, ours):
            y = m(x)
            in_place(y)
            grads.append(torch.autograd.grad((y * y).sum(), [x, m.weight]))
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b)
    ours.activation = "tanh"  # its backward reads the output: changing it in place is refused
    y = ours(x)
    y.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def _negative_view(shape):
    """A float32 tensor with the negative bit set (the .imag of a conjugated complex tensor): its
    memory holds the values un-negated."""
    z = torch.randn(shape, dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
    t = z.conj().imag
    assert t.is_neg()
    return t


@pytest.mark.parametrize(
    "op,shapes,which",
    [
        ("conv2d", [(2, 4, 7, 7), (5, 4, 3, 3), (5,)], 0),
        ("conv2d", [(2, 4, 7, 7), (5, 4, 3, 3), (5,)], 1),
        ("linear", [(56, 7), (9, 7), (9,)], 0),
        ("linear", [(64, 64), (64, 64), (64,)], 1),
        ("linear", [(3, 4, 8), (6, 8), (6,)], 2),
    ],
)
def test_negative_views_are_read_as_their_values(op, shapes, which):
    """A negative view among the arguments (found by a differential fuzz: the eager kernels
    read its memory, the un-negated values, silently) gives stock's result and gradients."""
    args = [
        torch.randn(s, generator=torch.Generator().manual_seed(i)) for i, s in enumerate(shapes)
    ]
    args[which] = _negative_view(shapes[which])
    stock = getattr(torch.nn.functional, op)
    ours_args = [a.clone().requires_grad_() if i != which else a for i, a in enumerate(args)]
    stock_args = [
        a.resolve_neg().clone().requires_grad_() if i != which else a.resolve_neg()
        for i, a in enumerate(args)
    ]
    y, ref = getattr(genkern.ops, op)(*ours_args), stock(*stock_args)
    torch.testing.assert_close(y, ref)
    g = torch.randn_like(ref)
    wrt = [i for i in range(3) if i != which]
    ours = torch.autograd.grad(y, [ours_args[i] for i in wrt], g)
    theirs = torch.autograd.grad(ref, [stock_args[i] for i in wrt], g)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)


_X4 = (2, 3, 8, 8)
# second derivatives (max_pool2d with silu included) on every path:
# tests/test_double_backward.py


BIASED = {  # name: (genkern's, stock's), with bias b
    "conv2d_relu": (
        lambda x, w, b, k: genkern.ops.conv2d(x, w, b, 1, 1, activation="relu", **k),
        lambda x, w, b: torch.relu(torch.nn.functional.conv2d(x, w, b, 1, 1)),
    ),
    "conv_transpose2d": (
        lambda x, w, b, k: genkern.ops.conv_transpose2d(x, w.transpose(0, 1), b, 2, 1, **k),
        lambda x, w, b: torch.nn.functional.conv_transpose2d(x, w.transpose(0, 1), b, 2, 1),
    ),
    "linear_silu": (
        lambda x, w, b, k: genkern.ops.linear(x.flatten(1)[:, :27], w.flatten(1), b, "silu", **k),
        lambda x, w, b: torch.nn.functional.silu(
            torch.nn.functional.linear(x.flatten(1)[:, :27], w.flatten(1), b)
        ),
    ),
}


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "custom_op"])
@pytest.mark.parametrize("name", list(BIASED))
def test_a_bias_changed_in_place_before_the_backward_is_not_refused(
    name, fast, backend, monkeypatch
):
    # found by fuzz round 21: the fused layers saved the bias (read only by a second
    # derivative's recomputation), so an in-place update of it between the forward and the
    # backward (an optimizer step, a manual decay) raised "modified by an inplace operation";
    # stock's backward does not read the bias, and trains
    if backend not in backends.available_backends("cpu", torch.float64):
        pytest.skip(f"the {backend} backend is not available here")
    monkeypatch.setattr(_fused, "FAST_EAGER", fast)
    ours, stock = BIASED[name]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    w = torch.randn(3, 3, 3, 3, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.randn(3, generator=g, dtype=torch.float64).requires_grad_()
    grads = []
    for f in (lambda x, w, b: ours(x, w, b, {"backend": backend}), stock):
        y = f(x, w, b)
        with torch.no_grad():
            b.add_(0.5)
        grads.append(torch.autograd.grad((y * y).sum(), (w, b)))
        with torch.no_grad():
            b.sub_(0.5)
    for a, c in zip(*grads, strict=True):
        torch.testing.assert_close(a, c)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("name", ["conv2d", "conv_transpose2d", "linear"])
def test_custom_op_outputs_are_not_views(name, backend, monkeypatch):
    # found by fuzz round 23: off the C++ path (a torch function mode, fast paths off) the
    # custom op returned the kernel's GEMM result reshaped, a view, so an in-place op after it
    # (DCGAN's ReLU(inplace=True) after its first layer, 1x1 -> 4x4) raised; stock's trains
    if backend not in backends.available_backends("cpu", torch.float32):
        pytest.skip(f"the {backend} backend is not available here")
    monkeypatch.setattr(_fused, "FAST_EAGER", False)
    x = torch.randn(2, 5, 1, 1, requires_grad=True)
    if name == "conv2d":  # 4x4 -> 1x1, a DCGAN discriminator's head
        w = torch.randn(3, 5, 4, 4, requires_grad=True)
        x = torch.randn(2, 5, 4, 4, requires_grad=True)
        y, ref = genkern.ops.conv2d(x, w, backend=backend), torch.nn.functional.conv2d(x, w)
    elif name == "conv_transpose2d":
        w = torch.randn(5, 3, 4, 4, requires_grad=True)
        y = genkern.ops.conv_transpose2d(x, w, backend=backend)
        ref = torch.nn.functional.conv_transpose2d(x, w)
    else:
        w = torch.randn(3, 5, requires_grad=True)
        y = genkern.ops.linear(x.flatten(1), w, backend=backend)
        ref = torch.nn.functional.linear(x.flatten(1), w)
    assert y._base is None
    y.relu_().sum().backward()
    (want,) = torch.autograd.grad(ref.relu().sum(), w)
    torch.testing.assert_close(w.grad, want)
