"""genkern.ops.conv_transpose2d and genkern.nn.ConvTranspose2d against the float64 reference, on
every backend (the Triton interpreter has its own module, tests/test_triton_conv_transpose2d.py)."""

import pytest
import torch
import torch.nn.functional as F
from _helpers import check_against_reference_unmodified
from conftest import DEVICE, grid_backends, needs_cpu_backend

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
# (N, C_in, H, W, C_out, kernel, stride, padding, output_padding, groups, dilation, bias)
SHAPES = [
    (2, 3, 5, 4, 5, 3, 2, 1, 1, 1, 1, True),  # odd sizes, output_padding
    (1, 4, 3, 3, 6, 4, 2, 1, 0, 1, 1, False),  # batch 1, DCGAN-style 4x4 s2 p1
    (2, 6, 3, 4, 4, 3, 3, 0, 2, 2, 1, True),  # stride 3, groups, output_padding 2
    (2, 5, 4, 4, 7, 1, 1, 0, 0, 1, 1, True),  # 1x1 kernel
    (2, 2, 3, 3, 3, 3, 2, 1, 1, 1, 2, True),  # dilation 2 with stride 2
    (1, 4, 4, 3, 4, 3, 1, 1, 0, 4, 1, True),  # depthwise
    (2, 3, 4, 2, 2, (3, 2), (1, 3), (2, 0), (0, 1), 1, (2, 1), True),  # rectangular everything
    (3, 5, 1, 1, 6, 4, 1, 0, 0, 1, 1, True),  # 1x1 input (DCGAN z -> 4x4): the cpu GEMM path
    (2, 4, 1, 1, 3, (3, 2), 2, 0, 0, 1, 1, False),  # 1x1 input, stride 2, no bias
]


def _case_id(case):
    return "x".join(str(v) for v in case)


def _make(case, dtype, layout, requires_grad=(True, True, True), device=DEVICE):
    n, c, h, w, oc, k, stride, padding, output_padding, groups, dilation, bias = case
    kh, kw = (k, k) if isinstance(k, int) else k
    x = testing.make_tensor([n, c, h, w], dtype, device, layout, requires_grad[0])
    wt = testing.make_tensor(
        [c, oc // groups, kh, kw], dtype, device, "contiguous", requires_grad[1]
    )
    b = testing.make_tensor([oc], dtype, device, "contiguous", requires_grad[2]) if bias else None
    kwargs = dict(
        stride=stride,
        padding=padding,
        output_padding=output_padding,
        groups=groups,
        dilation=dilation,
    )
    return (x, wt, b), kwargs


def _fns(kw, act, slope, backend):
    fn = lambda x, w, b: genkern.ops.conv_transpose2d(
        x, w, b, **kw, activation=act, negative_slope=slope, backend=backend
    )
    ref = lambda x, w, b: reference.conv_transpose2d(
        x, w, b, **kw, activation=act, negative_slope=slope
    )
    return fn, ref


# every activation on contiguous inputs; the other layouts with the activations whose backward
# reads the output, the pre-activation, or nothing
GRID = [(act, slope, "contiguous") for act, slope in ACTIVATIONS] + [
    (act, slope, layout)
    for act, slope in [(None, 0.01), ("leaky_relu", -0.1), ("sigmoid", 0.01)]
    for layout in ("channels_last", "noncontiguous")
]


@pytest.mark.parametrize("backend", grid_backends(torch.float64))
@pytest.mark.parametrize("act,slope,layout", GRID)
@pytest.mark.parametrize("case", SHAPES, ids=_case_id)
def test_forward_and_grads_float64(case, act, slope, layout, backend):
    inputs, kw = _make(case, torch.float64, layout)
    fn, ref = _fns(kw, act, slope, backend)
    check_against_reference_unmodified(fn, ref, inputs, torch.float64, backend)


@pytest.mark.parametrize("backend", grid_backends(torch.float32))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("act,slope", [("relu", 0.01), ("leaky_relu", -0.1), ("tanh", 0.01)])
@pytest.mark.parametrize("case", SHAPES[:3], ids=_case_id)
def test_float32_against_float64_reference(case, act, slope, layout, backend):
    inputs, kw = _make(case, torch.float32, layout)
    fn, ref = _fns(kw, act, slope, backend)
    testing.check_against_reference(fn, ref, inputs, torch.float32, backend)


@pytest.mark.parametrize("backend", grid_backends(torch.float32))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_output_layout_follows_input(layout, backend):
    (x, w, b), kw = _make(SHAPES[0], torch.float32, layout, (False, False, False))
    y = genkern.ops.conv_transpose2d(x, w, b, **kw, activation="relu", backend=backend)
    stock = F.relu(F.conv_transpose2d(x, w, b, **kw))
    assert y.shape == stock.shape and y.stride() == stock.stride()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_like_stock(dtype):
    backends = [b for b in grid_backends(dtype) if b != "torch"]
    if not backends:
        pytest.skip(f"no compiled backend supports {dtype} on {DEVICE} here")
    inputs, kw = _make((2, 16, 6, 6, 8, 4, 2, 1, 0, 1, 1, True), dtype, "channels_last")
    ref_fn = lambda x, w, b: reference.conv_transpose2d(x, w, b, **kw, activation="silu")
    ref_out, grad_out, ref_grads = testing.forward_and_grads(
        ref_fn, [testing.as_reference(t) for t in inputs]
    )
    stock_out, _, stock_grads = testing.forward_and_grads(
        ref_fn, [t.detach().requires_grad_() for t in inputs], grad_out
    )
    for backend in backends:
        fn = _fns(kw, "silu", 0.01, backend)[0]
        out, _, grads = testing.forward_and_grads(
            fn, [t.detach().requires_grad_() for t in inputs], grad_out
        )
        assert out.dtype == dtype
        testing.assert_like_stock(out, stock_out, ref_out, dtype, f"{backend} forward")
        for i, (g, sg, rg) in enumerate(zip(grads, stock_grads, ref_grads)):
            testing.assert_like_stock(g, sg, rg, dtype, f"{backend} grad #{i}")


@pytest.mark.parametrize("needs", [(False, True, True), (True, False, False), (False, False, True)])
def test_only_requested_grads(needs):
    for backend in grid_backends(torch.float64):
        inputs, kw = _make(SHAPES[0], torch.float64, "contiguous", needs)
        fn, ref = _fns(kw, "silu", 0.01, backend)
        testing.check_against_reference(fn, ref, inputs, torch.float64, backend)


@pytest.mark.skipif(
    "cpu" not in grid_backends(torch.float64), reason="the C++ extension genkern._C is not built"
)
@pytest.mark.parametrize(
    "act,slope,layout",
    [
        (None, 0.01, "channels_last"),
        ("leaky_relu", -0.1, "contiguous"),
        ("tanh", 0.01, "channels_last"),
        ("silu", 0.01, "contiguous"),
    ],
)
def test_gradcheck_cpu_kernel(act, slope, layout):
    inputs, kw = _make((1, 4, 2, 3, 4, 3, 2, 1, 1, 2, 1, True), torch.float64, layout, device="cpu")
    fn = _fns(kw, act, slope, "cpu")[0]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, nondet_tol=0.0)


@needs_cpu_backend
@pytest.mark.parametrize("x_cl", [False, True])
@pytest.mark.parametrize("w_cl", [False, True])
def test_one_pixel_input_gemm_path_matches_stock_layouts_and_gradcheck(x_cl, w_cl):
    # a 1x1 input is one GEMM on the cpu backend (csrc/cpu/conv_transpose2d_act.cpp): values,
    # output and gradient strides as stock's, for every combination of layouts
    x = torch.randn(3, 5, 1, 1, dtype=torch.float64)
    w = torch.randn(5, 4, 3, 2, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    if x_cl:
        x = x.to(memory_format=torch.channels_last)
    if w_cl:
        w = w.to(memory_format=torch.channels_last)
    outs = []
    for fn in (
        lambda x, w, b: genkern.ops.conv_transpose2d(x, w, b, 2, activation="tanh", backend="cpu"),
        lambda x, w, b: torch.tanh(torch.nn.functional.conv_transpose2d(x, w, b, 2)),
    ):
        leaves = [t.detach().clone().requires_grad_() for t in (x, w, b)]
        y = fn(*leaves)
        grads = torch.autograd.grad(y, leaves, torch.linspace(-1, 1, y.numel()).view_as(y))
        outs.append((y, *grads))
    for mine, stock in zip(*outs, strict=True):
        torch.testing.assert_close(mine, stock)
    # genkern's layout rule (the custom op's fakes): the output channels_last when the input or
    # the weight is, each gradient in its tensor's layout (stock varies with its kernel choice)
    fmt = {True: torch.channels_last, False: torch.contiguous_format}
    y, gx, gw, _ = outs[0]
    assert y.is_contiguous(memory_format=fmt[x_cl or w_cl])
    assert gx.is_contiguous(memory_format=fmt[x_cl]) and gw.is_contiguous(memory_format=fmt[w_cl])
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    fn = lambda x, w, b: genkern.ops.conv_transpose2d(x, w, b, 2, activation="silu", backend="cpu")
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("backend", grid_backends(torch.float64))
@pytest.mark.parametrize("act,slope", [("leaky_relu", 0.2), ("silu", 0.01), (None, 0.01)])
def test_opcheck(backend, act, slope):
    act_id = A.activation_id(act)
    for layout in ("contiguous", "channels_last"):
        (x, w, b), _ = _make(SHAPES[0], torch.float64, layout)
        conv_args = ([2, 2], [1, 1], [1, 1], [1, 1], 1)  # stride, padding, output_padding, dil, g
        args = (x, w, b, *conv_args, act_id, slope, not A.saves_output(act_id, slope), backend)
        torch.library.opcheck(torch.ops.genkern.conv_transpose2d_act.default, args)
        detached = [a.detach() if torch.is_tensor(a) else a for a in args]
        y, preact = torch.ops.genkern.conv_transpose2d_act(*detached)
        saved = None if act is None else (y if A.saves_output(act_id, slope) else preact)
        bargs = (
            torch.randn_like(y),
            saved,
            x.detach(),
            w.detach(),
            *conv_args,
            act_id,
            slope,
            [True, True, True],
            backend,
        )
        torch.library.opcheck(torch.ops.genkern.conv_transpose2d_act_backward.default, bargs)


def test_compile_fullgraph_matches():
    torch._dynamo.reset()
    model = torch.nn.Sequential(
        genkern.nn.ConvTranspose2d(6, 4, 4, 1, 0, bias=False, activation="relu"),
        genkern.nn.ConvTranspose2d(4, 3, 4, 2, 1, activation="tanh"),
    ).to(DEVICE)
    x = torch.randn(2, 6, 1, 1, device=DEVICE, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    y, yc = model(x), compiled(x)
    torch.testing.assert_close(yc, y)
    g, gc = (torch.autograd.grad(out.sum(), (x, model[0].weight, model[1].bias)) for out in (y, yc))
    for a, b in zip(g, gc):
        torch.testing.assert_close(a, b)


def test_compile_inductor_no_graph_break():
    torch._dynamo.reset()
    layer = genkern.nn.ConvTranspose2d(3, 4, 3, 2, 1, 1, activation="silu").to(DEVICE)
    x = torch.randn(1, 3, 4, 4, device=DEVICE)
    assert torch._dynamo.explain(layer)(x).graph_break_count == 0
    torch.testing.assert_close(torch.compile(layer, fullgraph=True)(x), layer(x))


def test_zero_batch_returns_empty():
    for backend in grid_backends(torch.float32):
        x = torch.randn(0, 3, 4, 4, device=DEVICE, requires_grad=True)
        w = torch.randn(3, 2, 3, 3, device=DEVICE, requires_grad=True)
        b = torch.randn(2, device=DEVICE, requires_grad=True)
        y = genkern.ops.conv_transpose2d(x, w, b, stride=2, activation="relu", backend=backend)
        assert y.shape == F.conv_transpose2d(x, w, b, stride=2).shape
        y.sum().backward()
        assert x.grad.shape == x.shape and torch.all(w.grad == 0) and torch.all(b.grad == 0)


def test_unbatched_input():
    x, w = torch.randn(3, 4, 4, device=DEVICE), torch.randn(3, 2, 3, 3, device=DEVICE)
    torch.testing.assert_close(
        genkern.ops.conv_transpose2d(x, w, stride=2, activation="tanh"),
        torch.tanh(F.conv_transpose2d(x, w, stride=2)),
    )


# ---- modules ---------------------------------------------------------------------------------


def test_module_is_drop_in_and_state_dict_round_trips():
    stock = torch.nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1, bias=False).to(DEVICE)
    ours = genkern.nn.ConvTranspose2d(
        8, 4, 4, stride=2, padding=1, bias=False, activation="leaky_relu", negative_slope=0.2
    ).to(DEVICE)
    assert isinstance(ours, torch.nn.ConvTranspose2d)
    assert ours.state_dict().keys() == stock.state_dict().keys()
    ours.load_state_dict(stock.state_dict())
    x = torch.randn(2, 8, 5, 5, device=DEVICE)
    torch.testing.assert_close(ours(x), F.leaky_relu(stock(x), 0.2))
    stock2 = torch.nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1, bias=False).to(DEVICE)
    stock2.load_state_dict(ours.state_dict())
    torch.testing.assert_close(stock2.weight, stock.weight)
    assert "negative_slope=0.2" in repr(ours)


@pytest.mark.parametrize("output_size", [[9, 9], [10, 10], (2, 4, 10, 9), torch.Size([10, 9])])
def test_module_output_size(output_size):
    stock = torch.nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1).to(DEVICE)
    ours = genkern.nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, activation="relu").to(DEVICE)
    ours.load_state_dict(stock.state_dict())
    x = torch.randn(2, 4, 5, 5, device=DEVICE)
    y = ours(x, output_size=output_size)
    torch.testing.assert_close(y, F.relu(stock(x, output_size=output_size)))
    assert list(y.shape[2:]) == list(output_size)[-2:]


def test_module_output_size_out_of_range_raises_like_torch():
    ours = genkern.nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1)
    with pytest.raises(ValueError, match="requested an output size of"):
        ours(torch.randn(1, 4, 5, 5), output_size=[12, 12])


def test_module_rejects_other_padding_modes_and_unknown_activation():
    with pytest.raises(ValueError, match='Only "zeros" padding mode is supported'):
        genkern.nn.ConvTranspose2d(3, 4, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match="activation must be None or one of 'relu'"):
        genkern.nn.ConvTranspose2d(3, 4, 3, activation="gelu")


# ---- bad inputs ------------------------------------------------------------------------------

_X, _W = torch.randn(2, 3, 5, 5), torch.randn(3, 4, 3, 3)
BAD_INPUTS = [
    # (description, kwargs for genkern.ops.conv_transpose2d, exception, message pattern)
    (
        "output_padding >= stride and dilation",
        dict(x=_X, weight=_W, stride=2, output_padding=2),
        RuntimeError,
        "output padding must be smaller than either stride or dilation, but got "
        "output_padding_height: 2 output_padding_width: 2 stride_height: 2 stride_width: 2 "
        "dilation_height: 1 dilation_width: 1",
    ),
    (
        "output_padding 1 at stride 1",
        dict(x=_X, weight=_W, output_padding=(0, 1)),
        RuntimeError,
        "output padding must be smaller than either stride or dilation",
    ),
    (
        "rank 2 input",
        dict(x=torch.randn(3, 5), weight=_W),
        RuntimeError,
        "Expected 3D \\(unbatched\\) or 4D \\(batched\\) input to conv_transpose2d",
    ),
    ("rank 3 weight", dict(x=_X, weight=torch.randn(3, 4, 3)), RuntimeError, "Expected 4D weight"),
    (
        "channel mismatch",
        dict(x=torch.randn(2, 5, 5, 5), weight=_W),
        RuntimeError,
        r"Given transposed=1, weight of size \[3, 4, 3, 3\], expected input\[2, 5, 5, 5\] to "
        "have 3 channels, but got 5 channels instead",
    ),
    (
        "groups mismatch",
        dict(x=_X, weight=_W, groups=2),
        RuntimeError,
        "expected weight to be divisible by 2 at dimension 0",
    ),
    (
        "bias size",
        dict(x=_X, weight=_W, bias=torch.randn(5)),
        RuntimeError,
        "expected bias to be 1-dimensional with 4 elements, but got bias of size \\[5\\]",
    ),
    (
        "output too small",
        dict(x=torch.randn(1, 3, 1, 1), weight=_W, padding=3),
        RuntimeError,
        r"Calculated output size per channel: \(-3 x -3\). Output size is too small",
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
    (
        "negative output_padding",
        dict(x=_X, weight=_W, stride=2, output_padding=-1),
        RuntimeError,
        "negative output_padding is not supported",
    ),
    ("zero stride", dict(x=_X, weight=_W, stride=0), RuntimeError, "non-positive stride"),
    ("zero dilation", dict(x=_X, weight=_W, dilation=0), RuntimeError, "non-positive dilation"),
    ("zero groups", dict(x=_X, weight=_W, groups=0), RuntimeError, "non-positive groups"),
    ("padding string", dict(x=_X, weight=_W, padding="same"), TypeError, "padding must be"),
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
        genkern.ops.conv_transpose2d(**kwargs)


def test_output_padding_check_matches_torch():
    with pytest.raises(RuntimeError) as ours:
        genkern.ops.conv_transpose2d(_X, _W, stride=2, output_padding=2)
    with pytest.raises(RuntimeError) as stock:
        F.conv_transpose2d(_X, _W, stride=2, output_padding=2)
    assert str(ours.value) == str(stock.value).splitlines()[0]


@pytest.mark.parametrize("backend", [b for b in grid_backends(torch.bfloat16) if b != "triton"])
def test_16bit_output_dim_no_tap_reaches(backend):
    # a 1-row bfloat16 input, a 2-row kernel dilated by 2 and padding 1: no tap reaches the output
    # row. torch 2.13's oneDNN bf16 deconvolution crashed the process here (SIGSEGV on AVX-512
    # CPUs, found by the fuzz); genkern runs such calls in float32
    if torch.device(DEVICE).type != "cpu":
        pytest.skip("the oneDNN crash this guards against is a CPU one")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 6, 1, 4, generator=g).bfloat16().requires_grad_()
    w = torch.randn(6, 1, 2, 3, generator=g).bfloat16().requires_grad_()
    b = torch.randn(2, generator=g).bfloat16().requires_grad_()
    kw = dict(stride=1, padding=[1, 0], groups=2, dilation=2)
    fn, ref = _fns(kw, "sigmoid", 0.01, backend)
    testing.check_against_reference(fn, ref, [x, w, b], torch.bfloat16, backend)
    with torch.no_grad():  # a call that records no graph (the packed-weight path on the cpu)
        testing.assert_close_to_reference(
            fn(x, w, b), ref(*(t.double() for t in (x, w, b))), torch.bfloat16, backend
        )
