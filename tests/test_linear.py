"""genkern.ops.linear and genkern.nn.Linear against the float64 reference, on every backend (the
Triton interpreter has its own module, tests/test_triton_linear.py)."""

import pytest
import torch
import torch.nn.functional as F
from _helpers import check_against_reference_unmodified
from conftest import DEVICE, grid_backends

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
# (input shape, out_features, bias)
SHAPES = [
    ((5, 7), 6, True),  # 2-D, sizes not a multiple of 8
    ((9,), 4, True),  # 1-D
    ((2, 3, 2, 5), 3, False),  # 4-D
    ((1, 1), 1, True),  # one row, one feature
    ((33, 17), 19, True),  # odd sizes past one tile
]
LAYOUTS = ["contiguous", "noncontiguous"]


def _case_id(case):
    shape, n, bias = case
    return "x".join(map(str, shape)) + f"-{n}-{bias}"


def _make(case, dtype, layout, requires_grad=(True, True, True), device=DEVICE):
    shape, n, bias = case
    x = testing.make_tensor(shape, dtype, device, layout, requires_grad[0])
    w = testing.make_tensor([n, shape[-1]], dtype, device, layout, requires_grad[1])
    b = testing.make_tensor([n], dtype, device, "contiguous", requires_grad[2]) if bias else None
    return x, w, b


def _fns(act, slope, backend):
    fn = lambda x, w, b: genkern.ops.linear(x, w, b, act, slope, backend=backend)
    ref = lambda x, w, b: reference.linear(x, w, b, act, slope)
    return fn, ref


@pytest.mark.parametrize("backend", grid_backends(torch.float64))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("act,slope", ACTIVATIONS)
@pytest.mark.parametrize("case", SHAPES, ids=_case_id)
def test_forward_and_grads_float64(case, act, slope, layout, backend):
    inputs = _make(case, torch.float64, layout)
    fn, ref = _fns(act, slope, backend)
    check_against_reference_unmodified(fn, ref, inputs, torch.float64, backend)


# the first is genkern's own GEMM on the cpu backend; the second too big for it and for the
# dot-product GEMM: ATen's mm, the bias added in the activation's pass (csrc/cpu/linear_act.cpp)
FLOAT32_CASES = [((2, 40, 24), 33, True), ((64, 300), 200, True), ((3, 50, 300), 200, False)]


@pytest.mark.parametrize("backend", grid_backends(torch.float32))
@pytest.mark.parametrize("act,slope", ACTIVATIONS)
@pytest.mark.parametrize("case", FLOAT32_CASES, ids=_case_id)
def test_float32_against_float64_reference(case, act, slope, backend):
    inputs = _make(case, torch.float32, "contiguous")
    fn, ref = _fns(act, slope, backend)
    testing.check_against_reference(fn, ref, inputs, torch.float32, backend)


def test_transposed_weight_view():
    """A weight that is a transposed view (tied weights) is read in place, on every backend."""
    x = torch.randn(4, 6, device=DEVICE, dtype=torch.float64, requires_grad=True)
    base = torch.randn(6, 5, device=DEVICE, dtype=torch.float64, requires_grad=True)
    for backend in grid_backends(torch.float64):
        fn, ref = _fns("silu", 0.01, backend)
        testing.check_against_reference(
            lambda x, w, fn=fn: fn(x, w.t(), None),
            lambda x, w, ref=ref: ref(x, w.t(), None),
            [x, base],
            torch.float64,
            backend,
        )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_like_stock(dtype):
    backends = [b for b in grid_backends(dtype) if b != "torch"]
    if not backends:
        pytest.skip(f"no compiled backend supports {dtype} on {DEVICE} here")
    inputs = _make(((16, 64), 32, True), dtype, "contiguous")
    ref_fn = _fns("silu", 0.01, None)[1]
    ref_out, grad_out, ref_grads = testing.forward_and_grads(
        ref_fn, [testing.as_reference(t) for t in inputs]
    )
    stock_out, _, stock_grads = testing.forward_and_grads(
        ref_fn, [t.detach().requires_grad_() for t in inputs], grad_out
    )
    for backend in backends:
        out, _, grads = testing.forward_and_grads(
            _fns("silu", 0.01, backend)[0], [t.detach().requires_grad_() for t in inputs], grad_out
        )
        assert out.dtype == dtype
        testing.assert_like_stock(out, stock_out, ref_out, dtype, f"{backend} forward")
        for i, (g, sg, rg) in enumerate(zip(grads, stock_grads, ref_grads)):
            testing.assert_like_stock(g, sg, rg, dtype, f"{backend} grad #{i}")


@pytest.mark.parametrize("needs", [(False, True, True), (True, False, False), (False, False, True)])
def test_only_requested_grads(needs):
    for backend in grid_backends(torch.float64):
        inputs = _make(SHAPES[0], torch.float64, "contiguous", needs)
        fn, ref = _fns("silu", 0.01, backend)
        testing.check_against_reference(fn, ref, inputs, torch.float64, backend)


@pytest.mark.skipif(
    "cpu" not in grid_backends(torch.float64), reason="the C++ extension genkern._C is not built"
)
@pytest.mark.parametrize("act,slope", ACTIVATIONS)
def test_gradcheck_cpu_kernel(act, slope):
    inputs = _make(((2, 3, 4), 5, True), torch.float64, "contiguous", device="cpu")
    fn = _fns(act, slope, "cpu")[0]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, nondet_tol=0.0)


@pytest.mark.parametrize("backend", grid_backends(torch.float64))
@pytest.mark.parametrize("act,slope", [("leaky_relu", 0.2), ("silu", 0.01), (None, 0.01)])
def test_opcheck(backend, act, slope):
    act_id = A.activation_id(act)
    x, w, b = _make(SHAPES[0], torch.float64, "contiguous")
    args = (x, w, b, act_id, slope, not A.saves_output(act_id, slope), backend)
    torch.library.opcheck(torch.ops.genkern.linear_act.default, args)
    y, preact = torch.ops.genkern.linear_act(
        *[a.detach() if torch.is_tensor(a) else a for a in args]
    )
    saved = None if act is None else (y if A.saves_output(act_id, slope) else preact)
    bargs = (
        torch.randn_like(y),
        saved,
        x.detach(),
        w.detach(),
        act_id,
        slope,
        [True, True, True],
        backend,
    )
    torch.library.opcheck(torch.ops.genkern.linear_act_backward.default, bargs)


def test_compile_fullgraph_matches():
    torch._dynamo.reset()
    model = torch.nn.Sequential(
        genkern.nn.Linear(8, 16, activation="leaky_relu", negative_slope=0.2),
        genkern.nn.Linear(16, 4, bias=False, activation="silu"),
    ).to(DEVICE)
    x = torch.randn(3, 2, 8, device=DEVICE, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    y, yc = model(x), compiled(x)
    torch.testing.assert_close(yc, y)
    g, gc = (torch.autograd.grad(out.sum(), (x, model[0].weight, model[0].bias)) for out in (y, yc))
    for a, b in zip(g, gc):
        torch.testing.assert_close(a, b)


def test_compile_inductor_no_graph_break():
    torch._dynamo.reset()
    layer = genkern.nn.Linear(6, 4, activation="tanh").to(DEVICE)
    x = torch.randn(5, 6, device=DEVICE)
    assert torch._dynamo.explain(layer)(x).graph_break_count == 0
    torch.testing.assert_close(torch.compile(layer, fullgraph=True)(x), layer(x))


@pytest.mark.parametrize("shape,n", [((0, 5), 3), ((4, 0, 5), 3), ((4, 5), 0), ((4, 0), 3)])
def test_zero_size(shape, n):
    for backend in grid_backends(torch.float32):
        x = torch.randn(shape, device=DEVICE, requires_grad=True)
        w = torch.randn(n, shape[-1], device=DEVICE, requires_grad=True)
        b = torch.randn(n, device=DEVICE, requires_grad=True)
        y = genkern.ops.linear(x, w, b, activation="relu", backend=backend)
        stock = F.relu(F.linear(x, w, b))
        torch.testing.assert_close(y, stock)
        gy = torch.randn_like(y)
        ours = torch.autograd.grad(y, (x, w, b), gy)
        ref = torch.autograd.grad(stock, (x, w, b), gy)
        for a, r in zip(ours, ref):
            torch.testing.assert_close(a, r)


# ---- modules ---------------------------------------------------------------------------------


def test_module_is_drop_in_and_state_dict_round_trips():
    stock = torch.nn.Linear(12, 7).to(DEVICE)
    ours = genkern.nn.Linear(12, 7, activation="leaky_relu", negative_slope=0.2).to(DEVICE)
    assert isinstance(ours, torch.nn.Linear)
    assert ours.state_dict().keys() == stock.state_dict().keys()
    ours.load_state_dict(stock.state_dict())
    x = torch.randn(3, 12, device=DEVICE)
    torch.testing.assert_close(ours(x), F.leaky_relu(stock(x), 0.2))
    stock2 = torch.nn.Linear(12, 7).to(DEVICE)
    stock2.load_state_dict(ours.state_dict())
    torch.testing.assert_close(stock2.weight, stock.weight)
    assert "negative_slope=0.2" in repr(ours)


def test_module_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation must be None or one of 'relu'"):
        genkern.nn.Linear(3, 4, activation="gelu")


# ---- bad inputs ------------------------------------------------------------------------------

_X, _W = torch.randn(4, 3), torch.randn(6, 3)
BAD_INPUTS = [
    # (description, kwargs for genkern.ops.linear, exception, message pattern)
    (
        "features mismatch",
        dict(x=_X, weight=torch.randn(6, 5)),
        RuntimeError,
        r"mat1 and mat2 shapes cannot be multiplied \(4x3 and 5x6\)",
    ),
    (
        "features mismatch 3-D",
        dict(x=torch.randn(2, 4, 3), weight=torch.randn(6, 5)),
        RuntimeError,
        r"mat1 and mat2 shapes cannot be multiplied \(8x3 and 5x6\)",
    ),
    (
        "0-D input",
        dict(x=torch.tensor(1.0), weight=_W),
        RuntimeError,
        "both arguments to linear need to be at least 1D, but they are 0D and 2D",
    ),
    ("3-D weight", dict(x=_X, weight=torch.randn(6, 3, 1)), RuntimeError, "Expected 2D weight"),
    (
        "1-D weight with a bias",
        dict(x=_X, weight=torch.randn(3), bias=torch.randn(1)),
        RuntimeError,
        "mat2 must be a matrix, got 1-D tensor",
    ),
    (
        "bias size",
        dict(x=_X, weight=_W, bias=torch.randn(5)),
        RuntimeError,
        r"The expanded size of the bias \[5\] must match the output size \[4, 6\] of linear",
    ),
    (
        "bias larger than the output",
        dict(x=_X, weight=_W, bias=torch.randn(2, 4, 6)),
        RuntimeError,
        "The expanded size of the bias",
    ),
    ("dtype mismatch", dict(x=_X, weight=_W.double()), RuntimeError, "same dtype"),
    ("integer input", dict(x=_X.long(), weight=_W), TypeError, "floating-point"),
    (
        "unknown activation",
        dict(x=_X, weight=_W, activation="gelu"),
        ValueError,
        "activation must be None or one of",
    ),
    (
        "slope not a number",
        dict(x=_X, weight=_W, activation="leaky_relu", negative_slope="0.2"),
        TypeError,
        "negative_slope must be a float",
    ),
    (
        "unknown backend",
        dict(x=_X, weight=_W, backend="metal"),
        ValueError,
        "backend must be one of 'auto', 'torch'",
    ),
    (
        "cuda backend on cpu tensors",
        dict(x=_X, weight=_W, backend="cuda"),
        RuntimeError,
        "backend 'cuda' is not available",
    ),
]


@pytest.mark.parametrize("desc,kwargs,exc,pattern", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_raise_clearly(desc, kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        genkern.ops.linear(**kwargs)


def test_shape_mismatch_message_matches_torch():
    w = torch.randn(6, 5)
    with pytest.raises(RuntimeError) as ours:
        genkern.ops.linear(_X, w)
    with pytest.raises(RuntimeError) as stock:
        F.linear(_X, w)
    assert str(ours.value) == str(stock.value).splitlines()[0]


def test_eager_paths_match_the_custom_op():
    """Plain eager calls skip the custom op's dispatch: no-grad, autograd and custom-op paths give
    the same results."""
    x, w, b = _make(SHAPES[4], torch.float64, "contiguous")
    for backend in grid_backends(torch.float64):
        with torch.no_grad():
            y_nograd = genkern.ops.linear(x, w, b, "silu", backend=backend)
        y = genkern.ops.linear(x, w, b, "silu", backend=backend)
        y_op, _ = torch.ops.genkern.linear_act(x, w, b, A.SILU, 0.01, True, backend)
        torch.testing.assert_close(y_nograd, y_op, rtol=0, atol=0)
        torch.testing.assert_close(y, y_op, rtol=0, atol=0)
        g = torch.autograd.grad(y, (x, w, b), torch.ones_like(y))
        g_op = torch.autograd.grad(y_op, (x, w, b), torch.ones_like(y))
        for a, r in zip(g, g_op):
            torch.testing.assert_close(a, r, rtol=0, atol=0)


@pytest.mark.parametrize("act", [None, "relu", "tanh"])
@pytest.mark.parametrize(
    "weight_shape,bias_shape",
    [((6, 3), (1,)), ((6, 3), ()), ((6, 3), (1, 6)), ((6, 3), (4, 6)), ((3,), None)],
    ids=str,
)
def test_linear_forms_of_stock(weight_shape, bias_shape, act):
    """F.linear also takes a 1-D weight (x @ weight) and a bias that broadcasts to the output
    ([1], 0-dim, full size): the same values and gradients (genkern raised on them: a fuzz)."""
    x = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(weight_shape, requires_grad=True)
    b = None if bias_shape is None else torch.randn(bias_shape, requires_grad=True)
    y = genkern.ops.linear(x, w, b, activation=act)
    ref = reference.activation(F.linear(x, w, b), act)
    torch.testing.assert_close(y, ref)
    wrt = [t for t in (x, w, b) if t is not None]
    g = torch.randn_like(ref)
    for a, e in zip(torch.autograd.grad(y, wrt, g), torch.autograd.grad(ref, wrt, g), strict=True):
        torch.testing.assert_close(a, e)


# F.linear's other forms, float64: (x shape, weight shape, bias shape or None)
BROADCAST_FORMS = [
    ((4, 3), (6, 3), (1,)),
    ((4, 3), (6, 3), ()),
    ((2, 4, 3), (6, 3), (4, 6)),
    ((5, 3), (3,), None),
    ((3,), (3,), None),
]


def _broadcast_inputs(form, device=DEVICE):
    xs, ws, bs = form
    x = torch.randn(xs, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(ws, dtype=torch.float64, device=device, requires_grad=True)
    b = None if bs is None else torch.randn(bs, dtype=torch.float64, device=device)
    return x, w, None if b is None else b.requires_grad_()


@pytest.mark.parametrize("backend", grid_backends(torch.float64))
@pytest.mark.parametrize("act,slope", [(None, 0.01), ("leaky_relu", 0.2), ("tanh", 0.01)])
@pytest.mark.parametrize("form", BROADCAST_FORMS, ids=str)
def test_linear_forms_of_stock_float64(form, act, slope, backend):
    fn, ref = _fns(act, slope, backend)
    inputs = _broadcast_inputs(form)
    check_against_reference_unmodified(fn, ref, inputs, torch.float64, backend)


@pytest.mark.skipif(
    "cpu" not in grid_backends(torch.float64), reason="the C++ extension genkern._C is not built"
)
@pytest.mark.parametrize("form", BROADCAST_FORMS, ids=str)
def test_gradcheck_linear_forms_of_stock(form):
    fn = _fns("leaky_relu", 0.2, "cpu")[0]
    inputs = _broadcast_inputs(form, device="cpu")
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, nondet_tol=0.0)
