"""genkern.ops.conv2d and genkern.nn.Conv2d against the float64 reference, on every backend."""

import pytest
import torch
import torch.nn.functional as F
from _helpers import check_against_reference_unmodified
from conftest import DEVICE, grid_backends, needs_cpu_backend

import genkern
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
# (N, C, H, W, OC, kernel, stride, padding, dilation, groups, bias)
SHAPES = [
    (2, 3, 9, 7, 5, 3, 1, 1, 1, 1, True),  # odd H/W, channels not a multiple of 8
    (1, 4, 8, 8, 6, 4, 2, 1, 1, 1, False),  # batch 1, DCGAN-style 4x4 s2 p1
    (2, 6, 7, 9, 4, 3, 2, 0, 2, 2, True),  # groups and dilation
    (2, 5, 6, 6, 7, 1, 1, 0, 1, 1, True),  # 1x1 kernel
    (2, 3, 10, 11, 4, 2, 3, 0, 1, 1, True),  # stride > kernel
    (3, 4, 5, 5, 4, 3, 1, "same", 1, 4, True),  # depthwise, padding "same"
    (2, 2, 9, 8, 3, 4, 1, "same", 2, 1, False),  # even kernel, dilated "same": asymmetric
    (2, 3, 6, 6, 2, (3, 1), (2, 1), (1, 0), 1, 1, True),  # rectangular everything
]


def _case_id(case):
    return "x".join(str(v) for v in case)


def _make(case, dtype, layout, requires_grad=(True, True, True)):
    n, c, h, w, oc, k, stride, padding, dilation, groups, bias = case
    kh, kw = (k, k) if isinstance(k, int) else k
    x = testing.make_tensor([n, c, h, w], dtype, DEVICE, layout, requires_grad[0])
    wt = testing.make_tensor(
        [oc, c // groups, kh, kw], dtype, DEVICE, "contiguous", requires_grad[1]
    )
    b = testing.make_tensor([oc], dtype, DEVICE, "contiguous", requires_grad[2]) if bias else None
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return (x, wt, b), kwargs


@pytest.mark.parametrize("backend", grid_backends(torch.float64))
@pytest.mark.parametrize("layout", testing.LAYOUTS)
@pytest.mark.parametrize("act,slope", ACTIVATIONS)
@pytest.mark.parametrize("case", SHAPES, ids=_case_id)
def test_forward_and_grads_float64(case, act, slope, layout, backend):
    inputs, kw = _make(case, torch.float64, layout)
    fn = lambda x, w, b: genkern.ops.conv2d(
        x, w, b, **kw, activation=act, negative_slope=slope, backend=backend
    )
    ref = lambda x, w, b: reference.conv2d(x, w, b, **kw, activation=act, negative_slope=slope)
    check_against_reference_unmodified(fn, ref, inputs, torch.float64, f"{backend}")


@pytest.mark.parametrize("backend", grid_backends(torch.float32))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("act,slope", ACTIVATIONS)
@pytest.mark.parametrize("case", SHAPES[:4], ids=_case_id)
def test_float32_against_float64_reference(case, act, slope, layout, backend):
    inputs, kw = _make(case, torch.float32, layout)
    fn = lambda x, w, b: genkern.ops.conv2d(
        x, w, b, **kw, activation=act, negative_slope=slope, backend=backend
    )
    ref = lambda x, w, b: reference.conv2d(x, w, b, **kw, activation=act, negative_slope=slope)
    testing.check_against_reference(fn, ref, inputs, torch.float32, f"{backend}")


@pytest.mark.parametrize("backend", grid_backends(torch.float32))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_output_layout_follows_input(layout, backend):
    (x, w, b), kw = _make(SHAPES[0], torch.float32, layout, (False, False, False))
    y = genkern.ops.conv2d(x, w, b, **kw, activation="relu", backend=backend)
    stock = F.relu(F.conv2d(x, w, b, **kw))
    assert y.stride() == stock.stride()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("act,slope", [("leaky_relu", 0.2), ("silu", 0.01), ("tanh", 0.01)])
def test_low_precision_like_stock(dtype, act, slope):
    backends = [b for b in grid_backends(dtype) if b != "torch"]
    if not backends:
        pytest.skip(f"no compiled backend supports {dtype} on {DEVICE} here")
    inputs, kw = _make((4, 16, 12, 12, 32, 3, 1, 1, 1, 1, True), dtype, "channels_last")
    ref_inputs = [testing.as_reference(t) for t in inputs]
    ref_out, grad_out, ref_grads = testing.forward_and_grads(
        lambda x, w, b: reference.conv2d(x, w, b, **kw, activation=act, negative_slope=slope),
        ref_inputs,
    )
    stock_out, _, stock_grads = testing.forward_and_grads(
        lambda x, w, b: reference.conv2d(x, w, b, **kw, activation=act, negative_slope=slope),
        [t.detach().requires_grad_() for t in inputs],
        grad_out,
    )
    for backend in backends:
        out, _, grads = testing.forward_and_grads(
            lambda x, w, b: genkern.ops.conv2d(
                x, w, b, **kw, activation=act, negative_slope=slope, backend=backend
            ),
            [t.detach().requires_grad_() for t in inputs],
            grad_out,
        )
        assert out.dtype == dtype
        testing.assert_like_stock(out, stock_out, ref_out, dtype, f"{backend} forward")
        for i, (g, sg, rg) in enumerate(zip(grads, stock_grads, ref_grads)):
            testing.assert_like_stock(g, sg, rg, dtype, f"{backend} grad #{i}")


@pytest.mark.parametrize("needs", [(False, True, True), (True, False, False), (False, False, True)])
def test_only_requested_grads(needs):
    for backend in grid_backends(torch.float64):
        inputs, kw = _make(SHAPES[0], torch.float64, "contiguous", needs)
        fn = lambda x, w, b: genkern.ops.conv2d(x, w, b, **kw, activation="silu", backend=backend)
        ref = lambda x, w, b: reference.conv2d(x, w, b, **kw, activation="silu")
        testing.check_against_reference(fn, ref, inputs, torch.float64, backend)


@pytest.mark.skipif(
    "cpu" not in grid_backends(torch.float64), reason="the C++ extension genkern._C is not built"
)
@pytest.mark.parametrize("act,slope", ACTIVATIONS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradcheck_cpu_kernel(act, slope, layout):
    (x, w, b), kw = _make((2, 4, 5, 5, 4, 3, 2, 1, 1, 2, True), torch.float64, layout)
    x = x.to("cpu").detach().requires_grad_()
    w, b = w.to("cpu").detach().requires_grad_(), b.to("cpu").detach().requires_grad_()
    fn = lambda x, w, b: genkern.ops.conv2d(
        x, w, b, **kw, activation=act, negative_slope=slope, backend="cpu"
    )
    assert torch.autograd.gradcheck(fn, (x, w, b), eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("backend", grid_backends(torch.float64))
@pytest.mark.parametrize("act,slope", [("leaky_relu", 0.2), ("silu", 0.01), (None, 0.01)])
def test_opcheck(backend, act, slope):
    from genkern import activations as A

    for layout in ("contiguous", "channels_last"):
        (x, w, b), kw = _make(SHAPES[1], torch.float64, layout)
        act_id = A.activation_id(act)
        args = (
            x,
            w,
            b,
            [2, 2],
            [1, 1],
            [1, 1],
            1,
            act_id,
            slope,
            not A.saves_output(act_id, slope),
            backend,
        )
        torch.library.opcheck(torch.ops.genkern.conv2d_act.default, args)
        y, preact = torch.ops.genkern.conv2d_act(
            *[a.detach() if torch.is_tensor(a) else a for a in args]
        )
        saved = None if act is None else (y if A.saves_output(act_id, slope) else preact)
        bargs = (
            torch.randn_like(y),
            saved,
            x.detach(),
            w.detach(),
            [2, 2],
            [1, 1],
            [1, 1],
            1,
            act_id,
            slope,
            [True, True, True],
            backend,
        )
        torch.library.opcheck(torch.ops.genkern.conv2d_act_backward.default, bargs)


def test_compile_fullgraph_matches():
    torch._dynamo.reset()
    model = torch.nn.Sequential(
        genkern.nn.Conv2d(3, 8, 4, 2, 1, bias=False, activation="leaky_relu", negative_slope=0.2),
        genkern.nn.Conv2d(8, 4, 3, 1, "same", activation="silu"),
    ).to(DEVICE)
    x = torch.randn(2, 3, 16, 16, device=DEVICE, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    y, yc = model(x), compiled(x)
    torch.testing.assert_close(yc, y)
    g, gc = (torch.autograd.grad(out.sum(), (x, model[0].weight)) for out in (y, yc))
    for a, b in zip(g, gc):
        torch.testing.assert_close(a, b)


def test_compile_inductor_no_graph_break():
    torch._dynamo.reset()
    layer = genkern.nn.Conv2d(3, 4, 3, padding=1, activation="relu").to(DEVICE)
    x = torch.randn(1, 3, 8, 8, device=DEVICE)
    explanation = torch._dynamo.explain(layer)(x)
    assert explanation.graph_break_count == 0
    torch.testing.assert_close(torch.compile(layer, fullgraph=True)(x), layer(x))


def test_zero_batch_returns_empty():
    for backend in grid_backends(torch.float32):
        x = torch.randn(0, 3, 8, 8, device=DEVICE, requires_grad=True)
        w = torch.randn(4, 3, 3, 3, device=DEVICE, requires_grad=True)
        y = genkern.ops.conv2d(x, w, stride=2, activation="relu", backend=backend)
        assert y.shape == F.conv2d(x, w, stride=2).shape
        y.sum().backward()
        assert x.grad.shape == x.shape and torch.all(w.grad == 0)


def test_unbatched_input():
    x, w = torch.randn(3, 8, 8, device=DEVICE), torch.randn(4, 3, 3, 3, device=DEVICE)
    torch.testing.assert_close(
        genkern.ops.conv2d(x, w, activation="tanh"), torch.tanh(F.conv2d(x, w))
    )


# ---- modules ---------------------------------------------------------------------------------


def test_module_is_drop_in_and_state_dict_round_trips():
    stock = torch.nn.Conv2d(3, 64, 4, stride=2, padding=1, bias=False).to(DEVICE)
    ours = genkern.nn.Conv2d(
        3, 64, 4, stride=2, padding=1, bias=False, activation="leaky_relu", negative_slope=0.2
    ).to(DEVICE)
    assert isinstance(ours, torch.nn.Conv2d)
    assert ours.state_dict().keys() == stock.state_dict().keys()
    ours.load_state_dict(stock.state_dict())
    x = torch.randn(2, 3, 16, 16, device=DEVICE)
    torch.testing.assert_close(ours(x), F.leaky_relu(stock(x), 0.2))
    stock2 = torch.nn.Conv2d(3, 64, 4, stride=2, padding=1, bias=False).to(DEVICE)
    stock2.load_state_dict(ours.state_dict())
    torch.testing.assert_close(stock2.weight, stock.weight)
    assert "negative_slope=0.2" in repr(ours)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_module_padding_modes(mode):
    stock = torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode=mode).to(DEVICE)
    ours = genkern.nn.Conv2d(3, 4, 3, padding=1, padding_mode=mode, activation="relu").to(DEVICE)
    ours.load_state_dict(stock.state_dict())
    x = torch.randn(2, 3, 7, 7, device=DEVICE)
    torch.testing.assert_close(ours(x), F.relu(stock(x)))


def test_module_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation must be None or one of 'relu'"):
        genkern.nn.Conv2d(3, 4, 3, activation="gelu")


# ---- bad inputs ------------------------------------------------------------------------------

_X, _W = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
BAD_INPUTS = [
    # (description, kwargs for genkern.ops.conv2d, exception, message pattern)
    ("rank 2 input", dict(x=torch.randn(3, 8), weight=_W), RuntimeError, "Expected 3D"),
    ("rank 5 input", dict(x=torch.randn(1, 2, 3, 8, 8), weight=_W), RuntimeError, "Expected 3D"),
    ("rank 3 weight", dict(x=_X, weight=torch.randn(4, 3, 3)), RuntimeError, "Expected 4D weight"),
    (
        "channel mismatch",
        dict(x=torch.randn(2, 5, 8, 8), weight=_W),
        RuntimeError,
        r"expected input\[2, 5, 8, 8\] to have 3 channels, but got 5",
    ),
    (
        "groups mismatch",
        dict(x=_X, weight=torch.randn(5, 1, 3, 3), groups=3),
        RuntimeError,
        "divisible by 3 at dimension 0",
    ),
    (
        "bias size",
        dict(x=_X, weight=_W, bias=torch.randn(5)),
        RuntimeError,
        "expected bias to be 1-dimensional with 4 elements",
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
        "negative padding",
        dict(x=_X, weight=_W, padding=-1),
        RuntimeError,
        "negative padding is not supported",
    ),
    ("zero stride", dict(x=_X, weight=_W, stride=0), RuntimeError, "non-positive stride"),
    ("negative stride", dict(x=_X, weight=_W, stride=(1, -2)), RuntimeError, "non-positive stride"),
    (
        "zero dilation",
        dict(x=_X, weight=_W, dilation=0),
        RuntimeError,
        "non-positive dilation is not supported",
    ),
    ("zero groups", dict(x=_X, weight=_W, groups=0), RuntimeError, "non-positive groups"),
    (
        "kernel too big",
        dict(x=torch.randn(1, 3, 2, 2), weight=_W),
        RuntimeError,
        "Kernel size can't be greater than actual input size",
    ),
    (
        "same with stride",
        dict(x=_X, weight=_W, padding="same", stride=2),
        ValueError,
        "padding='same' is not supported for strided convolutions",
    ),
    (
        "bad padding string",
        dict(x=_X, weight=_W, padding="full"),
        ValueError,
        "Invalid padding string: 'full'",
    ),
    ("stride tuple of 3", dict(x=_X, weight=_W, stride=(1, 1, 1)), TypeError, "stride must be"),
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
    (
        "slope not a number",
        dict(x=_X, weight=_W, activation="leaky_relu", negative_slope="0.2"),
        TypeError,
        "negative_slope must be a float",
    ),
]


@pytest.mark.parametrize("desc,kwargs,exc,pattern", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_raise_clearly(desc, kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        genkern.ops.conv2d(**kwargs)


def test_device_mismatch_message():
    if DEVICE == "cpu":
        meta = torch.empty(4, 3, 3, 3, device="meta")
        with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
            genkern.ops.conv2d(_X, meta)
    else:
        with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
            genkern.ops.conv2d(_X.to(DEVICE), _W)


@pytest.mark.skipif(
    "cpu" not in grid_backends(torch.float64), reason="the C++ extension genkern._C is not built"
)
def test_gradcheck_cpu_kernel_full_jacobian():
    (x, w, b), kw = _make((1, 2, 4, 4, 2, 3, 1, 1, 1, 1, True), torch.float64, "contiguous")
    args = [t.to("cpu").detach().requires_grad_() for t in (x, w, b)]
    fn = lambda x, w, b: genkern.ops.conv2d(x, w, b, **kw, activation="silu", backend="cpu")
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("backend", [b for b in grid_backends(torch.bfloat16) if b != "triton"])
def test_16bit_output_column_in_the_padding(backend):
    # a 1-column input, padding 1, stride 2, dilation 2: the first output column's window lies
    # wholly in the padding. torch 2.13's oneDNN bf16 conv crashed the process here (SIGSEGV on
    # AVX-512 CPUs, found by the fuzz); genkern runs such calls in float32
    if torch.device(DEVICE).type != "cpu":
        pytest.skip("the oneDNN crash this guards against is a CPU one")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 3, 1, generator=g).bfloat16()
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(3, 3, 2, 1, generator=g).bfloat16().requires_grad_()
    kw = dict(stride=[1, 2], padding=[1, 1], dilation=[1, 2])
    fn = lambda x, w: genkern.ops.conv2d(x, w, **kw, activation="silu", backend=backend)
    ref = lambda x, w: reference.conv2d(x, w, **kw, activation="silu")
    testing.check_against_reference(fn, ref, [x, w], torch.bfloat16, backend)
    with torch.no_grad():  # a call that records no graph (the packed-weight path on the cpu)
        testing.assert_close_to_reference(
            fn(x, w), ref(x.double(), w.double()), torch.bfloat16, backend
        )


# A kernel that covers its whole unpadded input (one output pixel: a DCGAN discriminator's last
# layer) runs as a dense layer on the cpu backend when x and the weight lie in the same order.
# (N, C, H, W, OC, bias)
WHOLE_INPUT = [(3, 8, 4, 4, 1, False), (2, 5, 3, 2, 4, True), (2, 1, 4, 4, 3, True)]


@needs_cpu_backend
@pytest.mark.parametrize("w_layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("x_layout", testing.LAYOUTS)
@pytest.mark.parametrize("act,slope", [(None, 0.01), ("leaky_relu", -0.1), ("silu", 0.01)])
@pytest.mark.parametrize("case", WHOLE_INPUT, ids=_case_id)
def test_whole_input_kernel_float64(case, act, slope, x_layout, w_layout):
    n, c, h, w, oc, bias = case
    x = testing.make_tensor([n, c, h, w], torch.float64, "cpu", x_layout, True)
    wt = testing.make_tensor([oc, c, h, w], torch.float64, "cpu", w_layout, True)
    b = testing.make_tensor([oc], torch.float64, "cpu", "contiguous", True) if bias else None
    kw = dict(stride=2, activation=act, negative_slope=slope)
    fn = lambda x, w, b: genkern.ops.conv2d(x, w, b, **kw, backend="cpu")
    ref = lambda x, w, b: reference.conv2d(x, w, b, **kw)
    check_against_reference_unmodified(fn, ref, [x, wt, b], torch.float64, "whole-input conv")
    y, y_stock = fn(x, wt, b), F.conv2d(x, wt, b, stride=2)
    assert y.stride() == y_stock.stride()  # ATen's layout, for the output and the gradients
    g = torch.ones_like(y)
    ours, stock = torch.autograd.grad(y, (x, wt), g), torch.autograd.grad(y_stock, (x, wt), g)
    assert [t.stride() for t in ours] == [t.stride() for t in stock]


@needs_cpu_backend
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_whole_input_kernel_gradcheck(layout):
    x = testing.make_tensor([2, 3, 3, 4], torch.float64, "cpu", layout, True)
    wt = testing.make_tensor([2, 3, 3, 4], torch.float64, "cpu", layout, True)
    b = testing.make_tensor([2], torch.float64, "cpu", "contiguous", True)
    fn = lambda x, w, b: genkern.ops.conv2d(x, w, b, activation="silu", backend="cpu")
    assert torch.autograd.gradcheck(fn, (x, wt, b), eps=1e-6, atol=1e-5)


@needs_cpu_backend
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("act,slope", [(None, 0.01), ("leaky_relu", 0.2), ("silu", 0.01)])
def test_whole_input_kernel_opcheck(act, slope, layout):
    # the dense-layer path's forward and backward custom ops
    from genkern import activations as A

    act_id = A.activation_id(act)
    preact = not A.saves_output(act_id, slope)
    x = testing.make_tensor([2, 3, 3, 4], torch.float64, "cpu", layout, True)
    wt = testing.make_tensor([2, 3, 3, 4], torch.float64, "cpu", layout, True)
    b = testing.make_tensor([2], torch.float64, "cpu", "contiguous", True)
    args = (x, wt, b, [1, 1], [0, 0], [1, 1], 1, act_id, slope, preact, "cpu")
    torch.library.opcheck(torch.ops.genkern.conv2d_act.default, args)
    y, z = torch.ops.genkern.conv2d_act(*[a.detach() if torch.is_tensor(a) else a for a in args])
    saved = None if act is None else (z if preact else y)
    bargs = (torch.randn_like(y), saved, x.detach(), wt.detach(), [1, 1], [0, 0], [1, 1], 1)
    bargs += (act_id, slope, [True, True, True], "cpu")
    torch.library.opcheck(torch.ops.genkern.conv2d_act_backward.default, bargs)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("act", [None, "relu", "tanh"])
def test_no_input_channels_gives_stocks_gradients(act, fast, monkeypatch):
    """C_in = 0: the output is act(bias) everywhere; the backward gives the bias's gradient and
    empty ones for x and the weight, as stock (it raised an internal error: found by a fuzz)."""
    from genkern.ops import _fused

    monkeypatch.setattr(_fused, "FAST_EAGER", fast)
    x = torch.randn(2, 0, 7, 7, requires_grad=True)
    w = torch.randn(6, 0, 3, 3, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    y = genkern.ops.conv2d(x, w, b, padding=1, activation=act)
    ref = reference.activation(F.conv2d(x, w, b, padding=1), act)
    torch.testing.assert_close(y, ref)
    g = torch.randn_like(y)
    for a, e in zip(
        torch.autograd.grad(y, [x, w, b], g), torch.autograd.grad(ref, [x, w, b], g), strict=True
    ):
        assert a.shape == e.shape
        torch.testing.assert_close(a, e)
