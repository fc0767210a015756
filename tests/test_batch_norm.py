"""genkern.ops.batch_norm, genkern.nn.BatchNorm2d and fold_batch_norm against the float64
reference, on every backend."""

import copy

import pytest
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from _helpers import assert_unchanged, clones
from conftest import DEVICE, device_backends, grid_backends

import genkern
from genkern import activations as A
from genkern import reference, testing

ACTIVATIONS = [
    (None, 0.01),
    ("relu", 0.01),
    ("leaky_relu", 0.2),
    ("leaky_relu", -0.1),  # negative slope: the backward needs the pre-activation
    ("tanh", 0.01),
    ("sigmoid", 0.01),
    ("silu", 0.01),
]
SHAPES = [(3, 5, 7, 6), (1, 4, 3, 3), (4, 3, 1, 1)]  # odd sizes, batch 1, 1x1 spatial


def _make(shape, dtype, layout, affine=True, requires_grad=True):
    c = shape[1]
    x = testing.make_tensor(shape, dtype, DEVICE, layout, requires_grad)
    w = testing.make_tensor([c], dtype, DEVICE, requires_grad=requires_grad, low=0.5, high=1.5)
    b = testing.make_tensor([c], dtype, DEVICE, requires_grad=requires_grad)
    rm = testing.make_tensor([c], dtype, DEVICE)
    rv = testing.make_tensor([c], dtype, DEVICE, low=0.5, high=1.5)
    return (x, w, b) if affine else (x, None, None), (rm, rv)


def _run_both(x, w, b, rm, rv, training, act, slope, backend, dtype, what):
    rm2, rv2 = rm.clone(), rv.clone()
    fn = lambda x, w, b: genkern.ops.batch_norm(  # noqa: E731
        x, rm, rv, w, b, training, 0.3, 1e-4, act, slope, backend=backend
    )
    ref = lambda x, w, b: reference.batch_norm(  # noqa: E731
        x, rm2.double(), rv2.double(), w, b, training, 0.3, 1e-4, act, slope
    )
    inputs = [x, w, b]
    testing.check_against_reference(fn, ref, inputs, dtype, what)
    # the running statistics: once more through each, from the same start
    rm.copy_(rm2), rv.copy_(rv2)
    rmr, rvr = rm2.double(), rv2.double()
    with torch.no_grad():
        genkern.ops.batch_norm(x, rm, rv, w, b, training, 0.3, 1e-4, act, slope, backend=backend)
        reference.batch_norm(
            x.double(),
            rmr,
            rvr,
            None if w is None else w.double(),
            None if b is None else b.double(),
            training,
            0.3,
            1e-4,
            act,
            slope,
        )
    testing.assert_close_to_reference(rm, rmr, dtype, f"{what} running_mean")
    testing.assert_close_to_reference(rv, rvr, dtype, f"{what} running_var")


@pytest.mark.parametrize("backend", grid_backends(torch.float64))
@pytest.mark.parametrize("layout", testing.LAYOUTS)
@pytest.mark.parametrize("act,slope", ACTIVATIONS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", SHAPES[:2], ids=str)
def test_forward_grads_and_running_stats_float64(shape, training, act, slope, layout, backend):
    (x, w, b), (rm, rv) = _make(shape, torch.float64, layout)
    before = clones([x, w, b])
    _run_both(x, w, b, rm, rv, training, act, slope, backend, torch.float64, backend)
    assert_unchanged(before, [x, w, b])


@pytest.mark.parametrize("backend", grid_backends(torch.float64))
@pytest.mark.parametrize("shape", [(4, 3, 1, 1), (5, 6), (2, 3, 7), (3, 2, 40, 41)], ids=str)
def test_other_ranks_and_sizes(shape, backend):
    (x, w, b), (rm, rv) = _make(shape, torch.float64, "contiguous")
    _run_both(x, w, b, rm, rv, True, "silu", 0.01, backend, torch.float64, backend)


@pytest.mark.parametrize("backend", grid_backends(torch.float64))
@pytest.mark.parametrize("training", [True, False])
def test_no_affine(training, backend):
    (x, _, _), (rm, rv) = _make((3, 4, 5, 5), torch.float64, "channels_last", affine=False)
    _run_both(x, None, None, rm, rv, training, "relu", 0.01, backend, torch.float64, backend)


@pytest.mark.parametrize("backend", grid_backends(torch.float32))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("act,slope", [("relu", 0.01), ("leaky_relu", 0.2), ("tanh", 0.01)])
def test_float32_against_float64_reference(act, slope, layout, backend):
    (x, w, b), (rm, rv) = _make((8, 16, 9, 9), torch.float32, layout)
    x = (x.detach() * 3 + 5).requires_grad_()  # an offset mean, as real activations have
    _run_both(x, w, b, rm, rv, True, act, slope, backend, torch.float32, backend)


def _saved_by(fn, *args):
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = fn(*args)
    return y, {t.data_ptr() for t in saved}


@pytest.mark.skipif(
    "cpu" not in grid_backends(torch.float32), reason="the C++ extension genkern._C is not built"
)
@pytest.mark.parametrize("fast", [True, False], ids=["eager_entry", "custom_op"])
@pytest.mark.parametrize("shape", [(6, 5, 7, 6), (3, 4, 70, 70)], ids=["slabs", "planes"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("scale_low", [0.5, 0.0], ids=["scales_from_0.5", "a_zero_scale"])
def test_leaky_relu_keeps_its_output_not_its_input(scale_low, layout, shape, fast, monkeypatch):
    """Training + leaky_relu on the cpu backend: the node keeps y (which the next layer keeps
    anyway) in x's place and reads x - mean back from it, unless a scale is near 0; either way
    the float64 reference's values and gradients, and the same bits on the C++ eager path and the
    custom op's."""
    from genkern.ops import _fused

    monkeypatch.setattr(_fused, "FAST_EAGER", fast)
    (x, w, b), _ = _make(shape, torch.float32, layout)
    with torch.no_grad():
        w.uniform_(scale_low, 1.5)[0] = scale_low
    fn = lambda x, w, b: genkern.ops.batch_norm(  # noqa: E731
        x, None, None, w, b, True, activation="leaky_relu", negative_slope=0.2, backend="cpu"
    )
    y, saved = _saved_by(fn, x, w, b)
    assert (x.data_ptr() not in saved) == (scale_low > 0)
    assert y.data_ptr() in saved or scale_low == 0  # (the C++ node then recomputes act's sign)
    ref = lambda x, w, b: reference.batch_norm(  # noqa: E731
        x, None, None, w, b, True, 0.1, 1e-5, "leaky_relu", 0.2
    )
    testing.check_against_reference(fn, ref, [x, w, b], torch.float32, "leaky_relu")
    grads = {}
    g = torch.randn_like(y)
    for entry in (True, False):  # the same bits either way
        monkeypatch.setattr(_fused, "FAST_EAGER", entry)
        grads[entry] = torch.autograd.grad(fn(x, w, b), [x, w, b], g)
    for a, c in zip(grads[True], grads[False], strict=True):
        assert torch.equal(a, c)


@pytest.mark.parametrize("backend", device_backends(torch.float16))
def test_16_bit_running_statistics_update_as_stock(backend):
    # found by the fuzz: a float16 batch variance over 65504 (std ~300) made the float16 running
    # variance inf, where stock lerps in float32 and rounds once (9168)
    x = (torch.randn(2, 3, 5, 2, device=DEVICE, dtype=torch.float64) * 300).half()
    stats = {}
    for name, fn in (
        ("stock", F.batch_norm),
        ("ours", lambda *a: genkern.ops.batch_norm(*a, backend=backend)),
    ):
        rm = torch.zeros(3, device=DEVICE, dtype=torch.float16)
        rv = torch.ones(3, device=DEVICE, dtype=torch.float16)
        fn(x, rm, rv, None, None, True, 0.1, 1e-5)
        stats[name] = (rm, rv)
    for ours, stock in zip(stats["ours"], stats["stock"], strict=True):
        assert torch.isfinite(ours).all()
        torch.testing.assert_close(ours, stock, rtol=2e-3, atol=0)


@pytest.mark.parametrize("backend", device_backends(torch.float16))
def test_float32_params_of_a_16_bit_input_get_float32_gradients(backend):
    # found by the fuzz: the Triton and CUDA backwards rounded grad_weight and grad_bias through
    # the input's float16 before the weight's float32: inf past 65504 (a GradScaler's scale)
    x = torch.randn(8, 2, 6, 6, device=DEVICE).half().requires_grad_()
    w = torch.ones(2, device=DEVICE, requires_grad=True)
    b = torch.zeros(2, device=DEVICE, requires_grad=True)
    g = torch.full(x.shape, 64.0, device=DEVICE, dtype=torch.float16)
    g[..., 3:] = 4096.0
    y = genkern.ops.batch_norm(x, None, None, w, b, True, backend=backend)
    gw, gb = torch.autograd.grad(y, (w, b), g)
    assert gw.dtype == gb.dtype == torch.float32
    torch.testing.assert_close(gb, g.double().sum((0, 2, 3)).float())
    xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref = torch.autograd.grad(F.batch_norm(xd, None, None, wd, bd, True), (wd,), g.double())[0]
    torch.testing.assert_close(gw.double(), ref, rtol=2e-3, atol=2e-3 * ref.abs().max())


@pytest.mark.skipif(
    "cpu" not in grid_backends(torch.float32), reason="the C++ extension genkern._C is not built"
)
@pytest.mark.parametrize("fast", [True, False], ids=["eager_entry", "custom_op"])
@pytest.mark.parametrize(
    "slope,shift,std,keeps",
    [
        (0.2, 0.5, 1.0, True),
        (1e-39, 0.0, 1.0, False),
        (0.2, 1e3, 1.0, False),
        (0.2, 1e4, 1.0, False),
        (0.2, 0.5, 1e-6, False),
    ],
    ids=["kept", "subnormal_slope", "shift_1e3", "shift_1e4", "std_below_eps"],
)
def test_output_kept_only_where_it_gives_x_back_accurately(
    slope, shift, std, keeps, fast, monkeypatch
):
    """Found by the fuzz: a float32 slope of 1e-39 (y / slope overflows) gave NaN gradients, a
    bias of 1e3 at scale 0.1 put grad_w 1e-4 off (y's rounding, relative to y, comes back in
    x - mean times about |b| / |w|), and so did a channel's std of 1e-6 next to eps 1e-5 (x_hat
    about 0.3 in size). Those keep x; the gradients are within float32's reach."""
    from genkern.ops import _fused

    monkeypatch.setattr(_fused, "FAST_EAGER", fast)
    (x, w, b), _ = _make((4, 3, 6, 5), torch.float32, "contiguous")
    with torch.no_grad():
        x.mul_(std)
        w.fill_(0.1)
        b.fill_(shift)
    var = x.detach().var(dim=(0, 2, 3), unbiased=False)
    act = A.activation_id("leaky_relu")
    ext = genkern.ops._registry.extension()
    assert (
        ext.batch_norm_keeps_output(x, w, b, True, act, slope, var, (var + 1e-5).rsqrt()) == keeps
    )
    fn = lambda x, w, b: genkern.ops.batch_norm(  # noqa: E731
        x, None, None, w, b, True, activation="leaky_relu", negative_slope=slope, backend="cpu"
    )
    y, saved = _saved_by(fn, x, w, b)
    assert (x.data_ptr() not in saved) == keeps
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, w, b], g)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    y64 = reference.batch_norm(x64, None, None, w64, b64, True, 0.1, 1e-5, "leaky_relu", slope)
    for ours, ref in zip(grads, torch.autograd.grad(y64, [x64, w64, b64], g.double())):
        torch.testing.assert_close(ours.double(), ref, rtol=2e-5, atol=2e-5 * ref.abs().max())


@pytest.mark.skipif(
    "cpu" not in grid_backends(torch.float32), reason="the C++ extension genkern._C is not built"
)
@pytest.mark.parametrize("fast", [True, False], ids=["eager_entry", "custom_op"])
def test_kept_output_modified_in_place_raises(fast, monkeypatch):
    """The kept output changed in place before the backward: autograd's error, not a wrong
    gradient (as stock's LeakyReLU(inplace=True))."""
    from genkern.ops import _fused

    monkeypatch.setattr(_fused, "FAST_EAGER", fast)
    (x, w, b), _ = _make((4, 3, 5, 5), torch.float32, "contiguous")
    y = genkern.ops.batch_norm(
        x, None, None, w, b, True, activation="leaky_relu", negative_slope=0.2, backend="cpu"
    )
    y.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_statistics_are_stable_with_a_large_mean():
    """The one-pass statistics are Welford-like: a mean of 1e4 costs no variance accuracy."""
    for backend in grid_backends(torch.float32):
        x = torch.randn(16, 3, 32, 32, device=DEVICE) + 1e4
        y = genkern.ops.batch_norm(x, None, None, training=True, backend=backend)
        ref = F.batch_norm(x.double(), None, None, training=True)
        assert testing.max_error(y, ref) < 5e-3, backend


@pytest.mark.skipif(
    "cpu" not in grid_backends(torch.float32), reason="the C++ extension genkern._C is not built"
)
@pytest.mark.parametrize("act,slope", [("relu", 0.01), ("leaky_relu", -0.1)])
def test_cpu_slabs_shifted_statistics_and_thread_count(act, slope):
    """NCHW with small planes runs slab by slab in fixed tasks (here 2), its statistics one pass of
    sums shifted by x[0, c, 0]: a channel whose first element is an outlier is redone exactly; the
    results do not depend on the number of threads."""
    (x, w, b), (rm, rv) = _make((600, 4, 8, 8), torch.float32, "contiguous")
    with torch.no_grad():
        x[:, 1] += 3.0  # an offset mean
        x[0, 2, 0, 0] = 1e3  # an outlier first: a shift far from the mean, redone exactly
    _run_both(x, w, b, rm, rv, True, act, slope, "cpu", torch.float32, f"slabs {act}")
    runs = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            y = genkern.ops.batch_norm(x, None, None, w, b, True, 0.1, 1e-5, act, slope, "cpu")
            runs.append((y, *torch.autograd.grad(y, (x, w, b), torch.ones_like(y))))
    finally:
        torch.set_num_threads(threads)
    for other in runs[1:]:
        for t, u in zip(runs[0], other, strict=True):
            assert torch.equal(t, u)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_like_stock(dtype):
    backends = [b for b in grid_backends(dtype) if b != "torch"]
    if not backends:
        pytest.skip(f"no compiled backend supports {dtype} on {DEVICE} here")
    (x, w, b), _ = _make((4, 16, 8, 8), dtype, "channels_last")
    ref_in = [testing.as_reference(t) for t in (x, w, b)]
    f_ref = lambda x, w, b: reference.batch_norm(x, None, None, w, b, True, activation="relu")  # noqa: E731
    ref_out, grad_out, ref_grads = testing.forward_and_grads(f_ref, ref_in)
    stock_in = [t.detach().requires_grad_() for t in (x, w, b)]
    stock_out, _, stock_grads = testing.forward_and_grads(f_ref, stock_in, grad_out)
    for backend in backends:
        out, _, grads = testing.forward_and_grads(
            lambda x, w, b, backend=backend: genkern.ops.batch_norm(
                x, None, None, w, b, True, activation="relu", backend=backend
            ),
            [t.detach().requires_grad_() for t in (x, w, b)],
            grad_out,
        )
        assert out.dtype == dtype
        testing.assert_like_stock(out, stock_out, ref_out, dtype, f"{backend} forward")
        for i, (g, sg, rg) in enumerate(zip(grads, stock_grads, ref_grads, strict=True)):
            testing.assert_like_stock(g, sg, rg, dtype, f"{backend} grad #{i}")


@pytest.mark.skipif(
    "cpu" not in grid_backends(torch.float64), reason="the C++ extension genkern._C is not built"
)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("act,slope", [("leaky_relu", 0.2), ("silu", 0.01), ("tanh", 0.01)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradcheck_cpu_kernel(layout, act, slope, training):
    (x, w, b), (rm, rv) = _make((3, 4, 3, 2), torch.float64, layout)
    x, w, b = (t.cpu().detach().requires_grad_() for t in (x, w, b))
    rm, rv = rm.cpu(), rv.cpu()
    fn = lambda x, w, b: genkern.ops.batch_norm(  # noqa: E731
        x, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-3, act, slope, backend="cpu"
    )
    assert torch.autograd.gradcheck(fn, (x, w, b), eps=1e-6, atol=1e-5, nondet_tol=0.0)


@pytest.mark.parametrize("backend", grid_backends(torch.float64))
@pytest.mark.parametrize("act,slope", [("leaky_relu", -0.1), ("relu", 0.01), (None, 0.01)])
def test_opcheck(backend, act, slope):
    act_id = A.activation_id(act)
    save_preact = A.needs_saved(act_id) and not A.saves_output(act_id, slope)
    for layout in ("contiguous", "channels_last"):
        for training in (True, False):
            (x, w, b), (rm, rv) = _make((2, 3, 4, 5), torch.float64, layout)
            args = (x, w, b, rm, rv, training, 1e-5, act_id, slope, save_preact, backend)
            torch.library.opcheck(torch.ops.genkern.batch_norm_act.default, args)
            y, mean, invstd, var, preact = torch.ops.genkern.batch_norm_act(
                *[a.detach() if torch.is_tensor(a) else a for a in args]
            )
            saved = None if act is None else (preact if save_preact else y)
            bargs = (
                torch.randn_like(y),
                saved,
                x.detach(),
                w.detach(),
                mean,
                invstd,
                training,
                act_id,
                slope,
                [True, True, True],
                backend,
            )
            torch.library.opcheck(torch.ops.genkern.batch_norm_act_backward.default, bargs)
            torch.library.opcheck(
                torch.ops.genkern.batch_norm_update_stats.default, (rm, rv, mean, var, 0.1, 40)
            )


def _stock_and_ours(**kw):
    stock = torch.nn.BatchNorm2d(6, **kw).to(DEVICE)
    ours = genkern.nn.BatchNorm2d(6, **kw, activation="leaky_relu", negative_slope=0.2).to(DEVICE)
    with torch.no_grad():
        if stock.weight is not None:
            stock.weight.uniform_(0.5, 1.5)
            stock.bias.uniform_(-1, 1)
    ours.load_state_dict(stock.state_dict())
    return stock, ours


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("track", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_module_training_steps_then_eval(momentum, track, affine):
    stock, ours = _stock_and_ours(momentum=momentum, track_running_stats=track, affine=affine)
    for step in range(3):
        x = torch.randn(4, 6, 5, 5, device=DEVICE) * (step + 1) + step
        torch.testing.assert_close(ours(x), F.leaky_relu(stock(x), 0.2))
    for (k, a), (_, s) in zip(ours.state_dict().items(), stock.state_dict().items(), strict=True):
        torch.testing.assert_close(a, s, msg=lambda m, k=k: f"{k}: {m}")
    ours.eval(), stock.eval()
    x = torch.randn(2, 6, 5, 5, device=DEVICE)
    torch.testing.assert_close(ours(x), F.leaky_relu(stock(x), 0.2))


def test_module_is_drop_in_and_state_dict_round_trips():
    stock, ours = _stock_and_ours()
    assert isinstance(ours, torch.nn.BatchNorm2d)
    assert ours.state_dict().keys() == stock.state_dict().keys()
    assert "negative_slope=0.2" in repr(ours)
    with pytest.raises(ValueError, match="expected 4D input"):
        ours(torch.randn(3, 6, 4, device=DEVICE))
    with pytest.raises(ValueError, match="activation must be None or one of"):
        genkern.nn.BatchNorm2d(4, activation="gelu")


def test_compile_fullgraph_matches_and_updates_running_stats():
    torch._dynamo.reset()
    model = torch.nn.Sequential(
        genkern.nn.Conv2d(3, 8, 3, padding=1, bias=False),
        genkern.nn.BatchNorm2d(8, activation="relu"),
        genkern.nn.MaxPool2d(2),
    ).to(DEVICE)
    twin = copy.deepcopy(model)
    compiled = torch.compile(twin, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 8, 8, device=DEVICE, requires_grad=True)
    y, yc = model(x), compiled(x)
    torch.testing.assert_close(yc, y)
    torch.testing.assert_close(twin[1].running_mean, model[1].running_mean)
    torch.testing.assert_close(twin[1].running_var, model[1].running_var)
    g = torch.autograd.grad(y.sum(), (x, model[1].weight))
    gc = torch.autograd.grad(yc.sum(), (x, twin[1].weight))
    for a, b in zip(g, gc, strict=True):
        torch.testing.assert_close(a, b)


def test_compile_inductor_no_graph_break():
    torch._dynamo.reset()
    layer = genkern.nn.BatchNorm2d(4, activation="silu").to(DEVICE).eval()
    x = torch.randn(2, 4, 5, 5, device=DEVICE)
    assert torch._dynamo.explain(layer)(x).graph_break_count == 0
    torch.testing.assert_close(torch.compile(layer, fullgraph=True)(x), layer(x))


def test_zero_batch_returns_empty():
    for backend in grid_backends(torch.float32):
        x = torch.randn(0, 3, 4, 4, device=DEVICE, requires_grad=True)
        rm, rv = torch.zeros(3, device=DEVICE), torch.ones(3, device=DEVICE)
        y = genkern.ops.batch_norm(x, rm, rv, training=True, activation="relu", backend=backend)
        assert y.shape == x.shape
        y.sum().backward()
        assert x.grad.shape == x.shape
        assert torch.equal(rm, torch.zeros(3, device=DEVICE))


# ---- folding -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["conv", "conv_bias", "convT", "convT_groups", "genkern_conv"])
def test_fold_batch_norm(kind):
    if kind.startswith("convT"):
        groups = 2 if kind == "convT_groups" else 1
        conv = torch.nn.ConvTranspose2d(4, 6, 4, 2, 1, bias=False, groups=groups)
    elif kind == "genkern_conv":
        conv = genkern.nn.Conv2d(4, 6, 3, padding=1, bias=False)
    else:
        conv = torch.nn.Conv2d(4, 6, 3, padding=1, bias=kind == "conv_bias")
    bn = genkern.nn.BatchNorm2d(6, activation="leaky_relu", negative_slope=0.2)
    model = torch.nn.Sequential(conv, bn).to(DEVICE)
    for _ in range(2):  # training steps give the running statistics values
        model(torch.randn(4, 4, 6, 6, device=DEVICE) * 2 + 1)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-1, 1)
    model.eval()
    x = torch.randn(2, 4, 6, 6, device=DEVICE)
    expected = model(x)
    folded = genkern.nn.fold_batch_norm(copy.deepcopy(model))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    torch.testing.assert_close(folded(x), expected, rtol=1e-5, atol=1e-5)


def test_fold_leaves_training_batch_norm():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    genkern.nn.fold_batch_norm(model)
    assert isinstance(model[1], torch.nn.BatchNorm2d)


def _trained_pair(conv, channels):
    bn = torch.nn.BatchNorm2d(channels)
    model = torch.nn.Sequential(conv, bn)
    for _ in range(2):  # running statistics away from 0 and 1
        model(torch.randn(4, conv.in_channels, 6, 6) * 2 + 1)
    return model.eval()


@pytest.mark.parametrize("case", ["conv_activation", "convT_activation", "tied_weight", "hook"])
def test_fold_leaves_what_it_cannot_fold(case):
    """Each of these (found by a differential fuzz) was folded and silently changed the output: a
    BatchNorm after genkern's fused conv activation (not linear), a conv whose weight another conv
    shares (the fold scaled both), a conv with a forward hook (it would see the folded output)."""
    if case == "convT_activation":
        model = _trained_pair(genkern.nn.ConvTranspose2d(3, 4, 3, activation="tanh"), 4)
    elif case == "conv_activation":
        model = _trained_pair(genkern.nn.Conv2d(3, 4, 3, activation="relu"), 4)
    else:
        model = _trained_pair(torch.nn.Conv2d(4, 4, 3, padding=1), 4)
    if case == "tied_weight":
        model.append(torch.nn.Conv2d(4, 4, 3, padding=1))
        model[2].weight = model[0].weight
    seen = []
    if case == "hook":
        model[0].register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    x = torch.randn(2, model[0].in_channels, 6, 6)
    with torch.no_grad():
        expected = model(x)
        for fold in (
            lambda m: genkern.nn.fold_batch_norm(copy.deepcopy(m)),
            lambda m: genkern.nn.convert(m, fold_bn=True),
        ):
            out = fold(model)(x)
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    if case == "hook":
        torch.testing.assert_close(seen[-1], seen[0])  # the conv's own output, unfolded


@pytest.mark.parametrize("on", ["conv", "bn"])
@pytest.mark.parametrize("kind", ["full", "pre"])
def test_fold_leaves_pairs_that_backward_hooks_watch(on, kind):
    # found by fuzz round 10a: a BatchNorm with a backward hook was folded (its hook never ran),
    # and a conv's backward hook got the gradient of the folded conv + BatchNorm output
    model = _trained_pair(torch.nn.Conv2d(3, 4, 3, padding=1), 4).double()
    seen = []
    module = model[0] if on == "conv" else model[1]
    if kind == "full":
        module.register_full_backward_hook(lambda m, gi, go: seen.append(go[0].clone()))
    else:
        module.register_full_backward_pre_hook(lambda m, go: seen.append(go[0].clone()))
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    model(x.requires_grad_()).sum().backward()
    for fold in (
        lambda m: genkern.nn.fold_batch_norm(copy.deepcopy(m)),
        lambda m: genkern.nn.convert(m, fold_bn=True),
    ):
        folded = fold(model)
        assert type(folded[1]) is not torch.nn.Identity
        folded(x).sum().backward()
        torch.testing.assert_close(seen[-1], seen[0], rtol=0, atol=0)
    assert len(seen) == 3


def test_eps_is_checked_as_torch():
    x, (rm, rv) = torch.randn(4, 3, 5, 5), (torch.zeros(3), torch.ones(3))
    for training, eps in [(True, 0.0), (True, -1.0), (False, -1.0)]:
        with pytest.raises(ValueError) as stock:
            F.batch_norm(x, rm.clone(), rv.clone(), training=training, eps=eps)
        with pytest.raises(ValueError) as ours:
            genkern.ops.batch_norm(x, rm.clone(), rv.clone(), training=training, eps=eps)
        assert str(ours.value) == str(stock.value)
    with pytest.raises(ValueError, match="must be positive during training"):
        genkern.nn.BatchNorm2d(3, eps=0.0)(x)
    y = genkern.ops.batch_norm(x, rm, rv, training=False, eps=0.0)  # eval allows 0, as torch
    torch.testing.assert_close(y, F.batch_norm(x, rm, rv, training=False, eps=0.0))


@pytest.mark.skipif(
    "bias" not in __import__("inspect").signature(torch.nn.BatchNorm2d).parameters,
    reason="this torch's BatchNorm2d has no bias argument (torch 2.13 added it)",
)
def test_bias_false_as_torch():
    ours, stock = genkern.nn.BatchNorm2d(3, bias=False), torch.nn.BatchNorm2d(3, bias=False)
    assert ours.bias is None and ours.weight is not None
    assert ours.state_dict().keys() == stock.state_dict().keys()
    x = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(ours(x), stock(x))


# ---- bad inputs ----------------------------------------------------------------------------------

_X = torch.randn(2, 3, 4, 4)
_S = (torch.zeros(3), torch.ones(3))
BAD_INPUTS = [
    (
        "batch 1 of 1x1 in training",
        dict(x=torch.randn(1, 4, 1, 1), running_mean=None, running_var=None, training=True),
        ValueError,
        r"Expected more than 1 value per channel when training, got input size "
        r"torch.Size\(\[1, 4, 1, 1\]\)",
    ),
    (
        "eval without stats",
        dict(x=_X, running_mean=None, running_var=None),
        RuntimeError,
        "running_mean must be defined in evaluation mode",
    ),
    (
        "2-D running_var",
        dict(x=_X, running_mean=_S[0], running_var=torch.ones(3, 1)),
        RuntimeError,
        r"expected running_var to be 1-dimensional with 3 elements, but got running_var of size "
        r"\[3, 1\]",
    ),
    (
        "float64 running stats for a float32 input",
        dict(x=_X, running_mean=_S[0].double(), running_var=_S[1].double()),
        RuntimeError,
        r"expected 'running_mean' to have the same dtype as 'input' \(torch.float32\)",
    ),
    (
        "running_mean size",
        dict(x=_X, running_mean=torch.zeros(4), running_var=_S[1]),
        RuntimeError,
        "running_mean should contain 3 elements not 4",
    ),
    (
        "weight size",
        dict(x=_X, running_mean=_S[0], running_var=_S[1], weight=torch.ones(2)),
        RuntimeError,
        "weight should contain 3 elements not 2",
    ),
    (
        "rank 1",
        dict(x=torch.randn(5), running_mean=None, running_var=None, training=True),
        ValueError,
        "expected 2D or higher input",
    ),
    (
        "integer input",
        dict(x=_X.long(), running_mean=_S[0], running_var=_S[1]),
        TypeError,
        "floating-point",
    ),
    (
        "weight dtype",
        dict(
            x=_X, running_mean=_S[0], running_var=_S[1], weight=torch.ones(3, dtype=torch.float64)
        ),
        RuntimeError,
        "same dtype",
    ),
    (
        "unknown activation",
        dict(x=_X, running_mean=_S[0], running_var=_S[1], activation="gelu"),
        ValueError,
        "activation must be None or one of",
    ),
    (
        "unknown backend",
        dict(x=_X, running_mean=_S[0], running_var=_S[1], backend="metal"),
        ValueError,
        "backend must be one of",
    ),
]


@pytest.mark.parametrize("desc,kwargs,exc,pattern", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_raise_clearly(desc, kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        genkern.ops.batch_norm(**kwargs)


@pytest.mark.parametrize("backend", grid_backends(torch.float32))
@pytest.mark.parametrize("reentrant", [False, True])
def test_running_stats_under_checkpoint_match_stock(reentrant, backend):
    # found by the fuzz: the non-reentrant checkpoint's recomputation stops once the tensors it
    # needs are saved, which skipped the update made after them (stock updates before); a later
    # fuzz found the custom op's path (the torch and triton backends) still updating after
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5, device=DEVICE, requires_grad=True)
    stock = torch.nn.BatchNorm2d(3).to(DEVICE)
    ours = genkern.nn.BatchNorm2d(3).to(DEVICE)
    for bn in (stock, ours):
        with genkern.use_backend(backend):
            y = torch.utils.checkpoint.checkpoint(bn, x, use_reentrant=reentrant)
            y.sum().backward()
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(stock, name))


@pytest.mark.skipif(
    "cpu" not in grid_backends(torch.float32), reason="the C++ extension genkern._C is not built"
)
@pytest.mark.parametrize("act", ["sigmoid", "silu", "tanh"])
def test_cpu_exp_activations_same_bits_for_any_thread_count(act):
    # found by the fuzz: eval batch_norm + sigmoid / silu (ATen's kernels then) 1 ulp apart, a
    # few of 170K elements (at the threads' split points)
    torch.manual_seed(1)
    x, w = torch.randn(32, 37, 13, 11), torch.randn(37)
    threads = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            outs.append(
                genkern.ops.batch_norm(
                    x,
                    torch.zeros(37),
                    torch.ones(37),
                    w,
                    None,
                    False,
                    activation=act,
                    backend="cpu",
                )
            )
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def _change_bias(bias: torch.nn.Parameter, how: str) -> None:
    if how == "data":
        bias.data.add_(1.0)
    elif how == "fused_sgd":  # torch's fused steps do not bump version counters
        bias.grad = torch.ones_like(bias)
        torch.optim.SGD([bias], lr=1.0, fused=True).step()
        bias.grad = None
    else:
        with torch.no_grad():
            bias.add_(1.0)


@pytest.mark.parametrize("fast", [True, False], ids=["eager_entry", "custom_op"])
@pytest.mark.parametrize("how", ["data", "fused_sgd", "no_grad_add"])
@pytest.mark.parametrize("act", [None, "relu", "leaky_relu"])
@pytest.mark.parametrize("training", [True, False])
def test_a_bias_changed_before_the_backward_leaves_the_gradients_alone(
    how, act, training, fast, monkeypatch
):
    from genkern.ops import _fused

    monkeypatch.setattr(_fused, "FAST_EAGER", fast)
    # found by fuzz round 11b: the backward read the bias as it was then (to recompute relu's
    # input from x, or x from a kept output): a fused optimizer step or a .data write between
    # forward and backward changed the gradients silently, a no_grad add_ made it refuse;
    # stock's backward does not read the bias
    torch.manual_seed(0)
    stock_act = {None: lambda t: t, "relu": F.relu}.get(act, lambda t: F.leaky_relu(t, 0.2))
    grads = []
    for fn in (
        lambda x, w, b, rm, rv: genkern.ops.batch_norm(
            x, rm, rv, w, b, training, activation=act, negative_slope=0.2
        ),
        lambda x, w, b, rm, rv: stock_act(F.batch_norm(x, rm, rv, w, b, training)),
    ):
        torch.manual_seed(1)
        x = torch.randn(4, 3, 5, 5, dtype=torch.float64, requires_grad=True)
        w = torch.nn.Parameter(torch.rand(3, dtype=torch.float64) + 0.5)
        b = torch.nn.Parameter(torch.randn(3, dtype=torch.float64))
        rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
        y = fn(x, w, b, rm, rv)
        _change_bias(b, how)
        y.square().sum().backward()
        grads.append((x.grad, w.grad, b.grad))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("how", ["data", "fused_sgd", "no_grad_add"])
def test_a_bias_changed_before_the_backward_of_a_recomputing_conv(how):
    # the same through a converted generator block, where the next conv recomputes BN + ReLU
    torch.manual_seed(0)
    stock = torch.nn.Sequential(
        torch.nn.ConvTranspose2d(4, 8, 4, 2, 1, bias=False),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(True),
        torch.nn.ConvTranspose2d(8, 3, 4, 2, 1, bias=False),
        torch.nn.Tanh(),
    ).double()
    ours = genkern.nn.convert(stock)
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    for model in (stock, ours):
        y = model(x)
        _change_bias(model[1].bias, how)
        y.square().sum().backward()
    for a, b in zip(ours.parameters(), stock.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)
