"""genkern.ops.max_pool2d / avg_pool2d / upsample_nearest2d and their modules against stock
PyTorch (float64), on every backend: same values, same gradient routing, same indices."""

import re

import pytest
import torch
import torch.nn.functional as F
from _helpers import assert_unchanged, clones
from conftest import DEVICE, grid_backends, needs_cpu_backend

import genkern
from genkern import reference, testing

# (N, C, H, W, kernel, stride, padding, dilation, ceil_mode)
MAX_CASES = [
    (2, 3, 8, 8, 2, None, 0, 1, False),  # the 2x2 pool of the CNNs
    (1, 5, 9, 7, 3, 2, 1, 1, True),  # odd sizes, padding, ceil_mode
    (2, 2, 10, 11, (3, 2), (2, 1), (1, 1), (2, 1), False),  # rectangular, dilation
    (2, 3, 7, 7, 2, 2, 1, 1, True),  # ceil_mode with a last window starting in the padding
    (3, 4, 5, 6, 3, 3, 0, 1, True),  # stride = kernel, partial last window
    (1, 2, 7, 38, 2, None, 0, 1, False),  # 2x2 over rows of 19 outputs: the vector clones' loop
    (2, 3, 5, 6, (1, 2), None, 0, 1, False),  # windows of 2 taps
    (1, 3, 4, 5, 1, 2, 0, 1, False),  # windows of 1 tap
]
# (N, C, H, W, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
AVG_CASES = [
    (2, 3, 8, 8, 2, None, 0, False, True, None),
    (1, 5, 9, 7, 3, 2, 1, True, True, None),
    (1, 5, 9, 7, 3, 2, 1, True, False, None),
    (2, 2, 10, 11, (3, 2), (2, 1), (1, 1), False, False, None),
    (2, 3, 7, 7, 2, 2, 1, True, True, 3),
    (3, 4, 5, 6, 3, 3, 1, True, False, None),
    # windows that tile the input (the cpu kernels' row loops): odd sizes leave a last row and
    # column outside every window; 1x2 windows; a divisor override
    (2, 3, 7, 9, 2, None, 0, False, True, None),
    (1, 2, 6, 8, (1, 2), None, 0, False, False, None),
    (2, 2, 4, 6, 2, 2, 0, True, True, 5),
    # negative divisors divide, as torch's (found by the fuzz: the kernels read them as none)
    (2, 2, 4, 6, 2, 2, 0, True, True, -2),
    (2, 3, 7, 7, 3, 2, 1, True, False, -3),
]
# (N, C, H, W, scale_factor, size)
UP_CASES = [
    (2, 3, 4, 5, 2, None),
    (1, 2, 5, 7, 1.7, None),
    (2, 3, 6, 4, (0.6, 2.3), None),
    (1, 4, 3, 3, 3, None),
    (2, 2, 4, 6, None, (11, 5)),
    (1, 3, 5, 5, None, (10, 10)),
    (2, 3, 6, 37, 2, None),  # x2: the rows' fast loops over an odd width
    (1, 2, 4, 20, (3, 2), None),  # x2 along rows, x3 down columns
]


def _id(case):
    return "x".join(str(v) for v in case)


@pytest.mark.parametrize("backend", grid_backends(torch.float64))
@pytest.mark.parametrize("layout", testing.LAYOUTS)
@pytest.mark.parametrize("case", MAX_CASES, ids=_id)
def test_max_pool2d_float64(case, layout, backend):
    n, c, h, w, k, s, p, d, ceil = case
    x = testing.make_tensor([n, c, h, w], torch.float64, DEVICE, layout, True)
    before = clones([x])
    kw = dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=ceil)
    y, idx = genkern.ops.max_pool2d(x, **kw, return_indices=True, backend=backend)
    ry, ridx = F.max_pool2d(x, **kw, return_indices=True)
    assert torch.equal(y, ry) and torch.equal(idx, ridx)
    assert y.stride() == ry.stride()
    g = torch.randn_like(y)
    assert torch.equal(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(ry, x, g)[0])
    assert_unchanged(before, [x])


# (activation, negative_slope): each backward kind (output saved; input saved: the pooled preact)
POOL_ACTIVATIONS = [
    ("relu", 0.01),
    ("leaky_relu", 0.2),
    ("leaky_relu", -0.3),
    ("tanh", 0.01),
    ("sigmoid", 0.01),
    ("silu", 0.01),
]


@pytest.mark.parametrize("backend", grid_backends(torch.float64))
@pytest.mark.parametrize("layout", testing.LAYOUTS)
@pytest.mark.parametrize("act", POOL_ACTIVATIONS, ids=lambda a: f"{a[0]}{a[1]}")
@pytest.mark.parametrize("case", MAX_CASES[:3], ids=_id)
def test_max_pool2d_activation_float64(case, act, layout, backend):
    """act(max pool): forward and gradient against the float64 reference, indices unchanged."""
    n, c, h, w, k, s, p, d, ceil = case
    x = testing.make_tensor([n, c, h, w], torch.float64, DEVICE, layout, True)
    kw = dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=ceil)
    name, slope = act
    fn = lambda x: genkern.ops.max_pool2d(  # noqa: E731
        x, **kw, activation=name, negative_slope=slope, backend=backend
    )
    ref = lambda x: reference.activation(F.max_pool2d(x, **kw), name, slope)  # noqa: E731
    testing.check_against_reference(fn, ref, [x], torch.float64, backend)
    _, idx = genkern.ops.max_pool2d(x, **kw, return_indices=True, activation=name, backend=backend)
    assert torch.equal(idx, F.max_pool2d(x, **kw, return_indices=True)[1])


@pytest.mark.parametrize("backend", grid_backends(torch.float32))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_max_pool2d_ties_and_nan_like_torch(layout, backend):
    # all ties: the first max takes the gradient; rows of 20 outputs (the vector loops' lanes)
    x = torch.zeros(2, 3, 6, 40, device=DEVICE)
    x[0, 1, 2, 3] = float("nan")
    x[0, 1, 2, 2] = float("nan")  # two NaNs in one window
    x[0, 1, 3, 29] = float("nan")
    x[1, 2] = float("-inf")  # a plane of -inf: the first tap's index
    x[1, 0, 1, 1] = float("inf")
    x[1, 0, 4, 37] = float("inf")
    x = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
    x.requires_grad_()
    for kw in (dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)):
        y, idx = genkern.ops.max_pool2d(x, **kw, return_indices=True, backend=backend)
        ry, ridx = F.max_pool2d(x, **kw, return_indices=True)
        torch.testing.assert_close(y, ry, equal_nan=True)
        assert torch.equal(idx, ridx)
        g = torch.randn_like(y)
        assert torch.equal(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(ry, x, g)[0])


@pytest.mark.skipif(
    "cpu" not in grid_backends(torch.float64), reason="the C++ extension genkern._C is not built"
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layout", testing.LAYOUTS)
@pytest.mark.parametrize("case", MAX_CASES, ids=_id)
def test_max_pool2d_without_graph_or_indices(case, layout, dtype):
    """A call that records no graph and returns no indices (the C++ fast entry: float and double)
    runs the kernels that track no index: stock's values bit for bit (NaN wins, ties), the same
    as the indexed kernels' with each activation, in the input's layout."""
    n, c, h, w, k, s, p, d, ceil = case
    x = testing.make_tensor([n, c, h, w], dtype, "cpu", layout)
    draw = torch.Generator().manual_seed(n * h * w)
    x[torch.rand(x.shape, generator=draw) < 0.1] = float("nan")  # NaN wins its window
    x[torch.rand(x.shape, generator=draw) < 0.2] = 0.5  # ties: the first tap is the max
    kw = dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=ceil)
    values_only = genkern.ops._registry.extension().max_pool2d_fast
    with torch.no_grad():
        ry = F.max_pool2d(x, **kw)
        for act, slope in [(None, 0.01), *POOL_ACTIVATIONS]:
            y = values_only(x, k, s, p, d, ceil, False, act, slope, "cpu")
            assert y is not None, "the fast entry declined"
            yi, _ = genkern.ops.max_pool2d(
                x, **kw, return_indices=True, activation=act, negative_slope=slope, backend="cpu"
            )
            assert torch.equal(y.isnan(), yi.isnan()), act
            assert torch.equal(y.nan_to_num(), yi.nan_to_num()), act
            assert y.stride() == ry.stride()
        y = genkern.ops.max_pool2d(x, **kw, backend="cpu")
    assert torch.equal(y.isnan(), ry.isnan()) and torch.equal(y.nan_to_num(), ry.nan_to_num())


@pytest.mark.parametrize("backend", grid_backends(torch.float64))
@pytest.mark.parametrize("layout", testing.LAYOUTS)
@pytest.mark.parametrize("case", AVG_CASES, ids=_id)
def test_avg_pool2d_float64(case, layout, backend):
    n, c, h, w, k, s, p, ceil, cip, div = case
    x = testing.make_tensor([n, c, h, w], torch.float64, DEVICE, layout, True)
    kw = dict(
        kernel_size=k,
        stride=s,
        padding=p,
        ceil_mode=ceil,
        count_include_pad=cip,
        divisor_override=div,
    )
    fn = lambda x: genkern.ops.avg_pool2d(x, **kw, backend=backend)  # noqa: E731
    testing.check_against_reference(
        fn, lambda x: reference.avg_pool2d(x, **kw), [x], torch.float64, backend
    )
    assert fn(x).stride() == F.avg_pool2d(x, **kw).stride()


@pytest.mark.parametrize("backend", grid_backends(torch.float64))
@pytest.mark.parametrize("layout", testing.LAYOUTS)
@pytest.mark.parametrize("case", UP_CASES, ids=_id)
def test_upsample_nearest2d_exact(case, layout, backend):
    n, c, h, w, sf, size = case
    x = testing.make_tensor([n, c, h, w], torch.float64, DEVICE, layout, True)
    y = genkern.ops.upsample_nearest2d(x, sf, size, backend=backend)
    ry = F.interpolate(x, size=size, scale_factor=sf, mode="nearest")
    assert torch.equal(y, ry) and y.stride() == ry.stride()
    g = torch.randn_like(y)
    testing.assert_close_to_reference(
        torch.autograd.grad(y, x, g)[0], torch.autograd.grad(ry, x, g)[0], torch.float64, "grad"
    )


@pytest.mark.skipif(
    "cpu" not in grid_backends(torch.float64), reason="the C++ extension genkern._C is not built"
)
@pytest.mark.parametrize("shape,kernel", [((3, 5, 7, 37), 2), ((2, 3, 4, 20), (1, 2))])
def test_avg_pool_tiled_backward_is_stocks_bits(shape, kernel):
    """The cpu kernels' row loops for windows that tile the input (each input row written once,
    no zero fill; -0 gradients become +0 as in the general loop): stock's bits, zeros past the
    last window."""
    x = testing.make_tensor(list(shape), torch.float32, "cpu", "contiguous", True)
    y = genkern.ops.avg_pool2d(x, kernel, backend="cpu")
    stock = F.avg_pool2d(x, kernel)
    g = torch.randn_like(y)
    g[0, 0, 0, 0] = -0.0
    ours, theirs = torch.autograd.grad(y, x, g)[0], torch.autograd.grad(stock, x, g)[0]
    assert torch.equal(ours, theirs)
    assert torch.equal(ours.signbit(), theirs.signbit())


@pytest.mark.skipif(
    "cpu" not in grid_backends(torch.float64), reason="the C++ extension genkern._C is not built"
)
@pytest.mark.parametrize("shape,sf", [((3, 5, 6, 37), 2), ((2, 3, 4, 20), (3, 2))])
def test_upsample_x2_rows_are_stocks_bits(shape, sf):
    """The cpu kernels' x2-along-rows loops (an input row per task, no zero fill) add each input
    pixel's gradients in the order of the general loop and of ATen's kernel: stock's bits."""
    x = testing.make_tensor(list(shape), torch.float32, "cpu", "contiguous", True)
    y = genkern.ops.upsample_nearest2d(x, sf, backend="cpu")
    stock = F.interpolate(x, scale_factor=sf, mode="nearest")
    g = torch.randn_like(y)
    assert torch.equal(y, stock)
    assert torch.equal(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(stock, x, g)[0])


@pytest.mark.parametrize("scale", [1.1, 1.3, 2.5, 0.7, 1.99])
def test_upsample_nearest_index_formula(scale):
    """Non-integer scales: the float32 floor(dst * 1 / scale) of ATen, dst by dst."""
    x = torch.arange(37.0, device=DEVICE).view(1, 1, 1, 37).expand(1, 1, 2, 37).contiguous()
    for backend in grid_backends(torch.float32):
        y = genkern.ops.upsample_nearest2d(x, (1, scale), backend=backend)
        assert torch.equal(y, F.interpolate(x, scale_factor=(1, scale), mode="nearest"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_other_dtypes(dtype):
    x = testing.make_tensor([2, 8, 8, 8], dtype, DEVICE, "channels_last", True)
    for backend in grid_backends(dtype):
        for fn, ref in [
            (lambda x, b: genkern.ops.max_pool2d(x, 2, backend=b), lambda x: F.max_pool2d(x, 2)),
            (
                lambda x, b: genkern.ops.avg_pool2d(x, 3, 2, 1, backend=b),
                lambda x: F.avg_pool2d(x, 3, 2, 1),
            ),
            (
                lambda x, b: genkern.ops.upsample_nearest2d(x, 2, backend=b),
                lambda x: F.interpolate(x, scale_factor=2),
            ),
        ]:
            x64 = testing.as_reference(x)
            y, ry = fn(x, backend), ref(x64)
            testing.assert_close_to_reference(y, ry, dtype, f"{backend} forward")
            g = torch.randn_like(y)
            testing.assert_close_to_reference(
                torch.autograd.grad(y, x, g)[0],
                torch.autograd.grad(ry, x64, g.double())[0],
                dtype,
                f"{backend} grad",
            )


@pytest.mark.skipif(
    "cpu" not in grid_backends(torch.float64), reason="the C++ extension genkern._C is not built"
)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradcheck_cpu_kernels(layout):
    x = testing.make_tensor([2, 3, 5, 6], torch.float64, "cpu", layout, True)
    for fn in (
        lambda x: genkern.ops.max_pool2d(x, 3, 2, 1, ceil_mode=True, backend="cpu"),
        lambda x: genkern.ops.max_pool2d(x, 2, activation="tanh", backend="cpu"),
        lambda x: genkern.ops.max_pool2d(x, 3, 2, 1, activation="silu", backend="cpu"),
        lambda x: genkern.ops.avg_pool2d(x, 3, 2, 1, True, False, backend="cpu"),
        lambda x: genkern.ops.upsample_nearest2d(x, 1.5, backend="cpu"),
    ):
        assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-5, nondet_tol=0.0)


@pytest.mark.parametrize("backend", grid_backends(torch.float64))
def test_opcheck(backend):
    ops = torch.ops.genkern
    for layout in ("contiguous", "channels_last"):
        x = testing.make_tensor([2, 3, 7, 6], torch.float64, DEVICE, layout, True)
        cl = layout == "channels_last"
        # no activation; relu (its output saved); silu (its input saved: the pooled preact)
        for act, slope, save_preact in ((0, 0.01, False), (1, 0.01, False), (5, 0.01, True)):
            geometry = ([3, 3], [2, 2], [1, 1], [1, 1])
            args = (x, *geometry, True, act, slope, save_preact, backend)
            torch.library.opcheck(ops.max_pool2d.default, args)
            y, idx, preact = ops.max_pool2d(x.detach(), *args[1:])
            saved = None if act == 0 else preact if save_preact else y
            torch.library.opcheck(
                ops.max_pool2d_backward.default,
                (
                    torch.randn_like(y),
                    saved,
                    idx,
                    list(x.shape),
                    cl,
                    *geometry,
                    act,
                    slope,
                    backend,
                ),
            )
        torch.library.opcheck(
            ops.avg_pool2d.default, (x, [3, 2], [2, 1], [1, 1], True, False, 0, backend)
        )
        y = ops.avg_pool2d(x.detach(), [3, 2], [2, 1], [1, 1], True, False, 0, backend)
        torch.library.opcheck(
            ops.avg_pool2d_backward.default,
            (
                torch.randn_like(y),
                list(x.shape),
                cl,
                [3, 2],
                [2, 1],
                [1, 1],
                True,
                False,
                0,
                backend,
            ),
        )
        torch.library.opcheck(ops.upsample_nearest2d.default, (x, [11, 9], 1.7, 1.5, backend))
        torch.library.opcheck(
            ops.upsample_nearest2d_backward.default,
            (
                torch.randn(2, 3, 11, 9, dtype=torch.float64, device=DEVICE),
                list(x.shape),
                cl,
                1.7,
                1.5,
                backend,
            ),
        )


def test_compile_fullgraph_matches():
    torch._dynamo.reset()
    model = torch.nn.Sequential(
        genkern.nn.MaxPool2d(2),
        genkern.nn.Upsample(scale_factor=2),
        genkern.nn.AvgPool2d(3, 2, 1, ceil_mode=True),
    ).to(DEVICE)
    x = torch.randn(2, 3, 8, 8, device=DEVICE, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    y, yc = model(x), compiled(x)
    torch.testing.assert_close(yc, y)
    torch.testing.assert_close(
        torch.autograd.grad(yc.sum(), x)[0], torch.autograd.grad(y.sum(), x)[0]
    )


def test_compile_inductor_no_graph_break():
    torch._dynamo.reset()
    layer = genkern.nn.MaxPool2d(2).to(DEVICE)
    x = torch.randn(1, 3, 8, 8, device=DEVICE)
    assert torch._dynamo.explain(layer)(x).graph_break_count == 0
    torch.testing.assert_close(torch.compile(layer, fullgraph=True)(x), layer(x))


def test_modules_are_drop_in():
    x = torch.randn(2, 3, 9, 9, device=DEVICE)
    pairs = [
        (
            genkern.nn.MaxPool2d(3, 2, 1, ceil_mode=True),
            torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True),
        ),
        (genkern.nn.AvgPool2d(2, count_include_pad=False), torch.nn.AvgPool2d(2)),
        (genkern.nn.Upsample(scale_factor=1.5), torch.nn.Upsample(scale_factor=1.5)),
        (genkern.nn.Upsample(size=(4, 13)), torch.nn.Upsample(size=(4, 13))),
    ]
    for ours, stock in pairs:
        assert isinstance(ours, type(stock))
        torch.testing.assert_close(ours(x), stock(x))
    y, idx = genkern.nn.MaxPool2d(2, return_indices=True)(x)
    assert torch.equal(idx, torch.nn.MaxPool2d(2, return_indices=True)(x)[1])
    with pytest.raises(ValueError, match="mode='nearest' only"):
        genkern.nn.Upsample(scale_factor=2, mode="bilinear")


def test_unbatched_and_zero_batch():
    x = torch.randn(3, 6, 6, device=DEVICE)
    torch.testing.assert_close(genkern.ops.max_pool2d(x, 2), F.max_pool2d(x, 2))
    torch.testing.assert_close(genkern.ops.avg_pool2d(x, 2), F.avg_pool2d(x, 2))
    for backend in grid_backends(torch.float32):
        z = torch.randn(0, 3, 6, 6, device=DEVICE, requires_grad=True)
        for y in (
            genkern.ops.max_pool2d(z, 2, backend=backend),
            genkern.ops.avg_pool2d(z, 2, backend=backend),
            genkern.ops.upsample_nearest2d(z, 2, backend=backend),
        ):
            y.sum().backward()
            assert z.grad.shape == z.shape


_X = torch.randn(2, 3, 5, 5)
BAD_INPUTS = [
    (
        "unbatched input without channels",
        lambda: genkern.ops.max_pool2d(torch.randn(0, 7, 7), 2),
        RuntimeError,
        r"non-empty 3D or 4D \(batch mode\) tensor expected for input, but got input of size: "
        r"\[0, 7, 7\]",
    ),
    (
        "avg unbatched input without channels",
        lambda: genkern.ops.avg_pool2d(torch.randn(0, 7, 7), 2),
        RuntimeError,
        "non-empty 3D or 4D",
    ),
    (
        "upsample size of one dim",
        lambda: genkern.ops.upsample_nearest2d(_X, size=(3,)),
        ValueError,
        r"Input and output must have the same number of spatial dimensions, but got input with "
        r"spatial dimensions of \[\d+, \d+\] and output size of \(3,\)",
    ),
    (
        "max pad > half kernel",
        lambda: genkern.ops.max_pool2d(_X, 2, padding=2),
        RuntimeError,
        "pad should be at most half of effective kernel size, but got pad=2, kernel_size=2 and "
        "dilation=1",
    ),
    (
        "max dilated pad",
        lambda: genkern.ops.max_pool2d(_X, 3, dilation=2, padding=3),
        RuntimeError,
        "but got pad=3, kernel_size=3 and dilation=2",
    ),
    (
        "avg pad > half kernel",
        lambda: genkern.ops.avg_pool2d(_X, 2, padding=2),
        RuntimeError,
        "pad should be at most half of effective kernel size",
    ),
    (
        "output too small",
        lambda: genkern.ops.max_pool2d(torch.randn(2, 3, 1, 1), 2),
        RuntimeError,
        r"Given input size: \(3x1x1\). Calculated output size: \(3x0x0\). Output "
        "size is too small",
    ),
    (
        "zero stride",
        lambda: genkern.ops.max_pool2d(_X, 2, stride=0),
        RuntimeError,
        "stride should not be zero",
    ),
    (
        "zero dilation",
        lambda: genkern.ops.max_pool2d(_X, 2, dilation=0),
        RuntimeError,
        "dilation should be greater than zero",
    ),
    (
        "zero kernel",
        lambda: genkern.ops.avg_pool2d(_X, 0, stride=1),
        RuntimeError,
        "kernel size should be greater than zero",
    ),
    (
        "zero divisor",
        lambda: genkern.ops.avg_pool2d(_X, 2, divisor_override=0),
        RuntimeError,
        "divisor must be not zero",
    ),
    ("rank 2", lambda: genkern.ops.max_pool2d(torch.randn(5, 5), 2), RuntimeError, "3D or 4D"),
    (
        "complex input",
        lambda: genkern.ops.avg_pool2d(_X.to(torch.complex64), 2),
        NotImplementedError,
        "not implemented for 'ComplexFloat'",
    ),  # stock's words
    (
        "size and scale",
        lambda: genkern.ops.upsample_nearest2d(_X, 2, (4, 4)),
        ValueError,
        "only one of size or scale_factor should be defined",
    ),
    (
        "neither size nor scale",
        lambda: genkern.ops.upsample_nearest2d(_X),
        ValueError,
        "either size or scale_factor should be defined",
    ),
    (
        "upsample rank 3",
        lambda: genkern.ops.upsample_nearest2d(_X[0], 2),
        ValueError,
        "Only 4D input",
    ),
]


@pytest.mark.parametrize("desc,fn,exc,pattern", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_raise_clearly(desc, fn, exc, pattern):
    with pytest.raises(exc, match=pattern):
        fn()


@needs_cpu_backend
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_upsample_backward_sums_16bit_gradients_in_float32(layout):
    # found by the thorough fuzz: many outputs share a source pixel; a bfloat16 sum rounded after
    # every add was ~10x stock's error
    x = torch.randn(1, 2, 3, 2).to(torch.bfloat16)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn(1, 2, 24, 16).to(torch.bfloat16)
    leaf = x.clone().requires_grad_()
    y = genkern.ops.upsample_nearest2d(leaf, scale_factor=8, backend="cpu")
    (gx,) = torch.autograd.grad(y, [leaf], g)
    stock_leaf = x.clone().requires_grad_()
    stock_y = torch.nn.functional.interpolate(stock_leaf, scale_factor=8, mode="nearest")
    (stock_gx,) = torch.autograd.grad(stock_y, [stock_leaf], g)
    expected = g.double().view(1, 2, 3, 8, 2, 8).sum((3, 5))
    testing.assert_like_stock(gx, stock_gx, expected, torch.bfloat16, "upsample grad")


# windows that do not overlap (no padding or dilation, kernel <= stride): the cpu backward zeroes
# each band of input rows and writes its windows' gradients (no zero fill, no scatter over all)
TILED = [
    (2, 3, 9, 7, (2, 2), (2, 2), False),  # odd sizes: a last input row and column in no window
    (1, 4, 8, 9, (2, 1), (3, 2), False),  # kernel < stride: gap rows and columns
    (2, 2, 7, 8, (3, 3), (3, 3), True),  # ceil_mode: clipped last windows
    (1, 3, 1, 5, (1, 2), (1, 2), False),  # a 1-row input
]


@pytest.mark.skipif(
    "cpu" not in grid_backends(torch.float32), reason="the C++ extension genkern._C is not built"
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", TILED, ids=_id)
def test_max_pool_backward_of_tiled_windows_is_stocks_bits(case, layout, dtype):
    n, c, h, w, k, s, ceil = case
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-3, 4, (n, c, h, w), generator=g).to(dtype)  # ties on a coarse grid
    x = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
    grads = []
    for fn in (
        lambda t: genkern.ops.max_pool2d(t, k, s, ceil_mode=ceil, backend="cpu"),
        lambda t: F.max_pool2d(t, k, s, ceil_mode=ceil),
    ):
        leaf = x.detach().clone().requires_grad_()
        y = fn(leaf)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
        gy[..., 0] = -0.0  # a negative zero becomes +0, as in a scatter-add into zeros
        grads.append(torch.autograd.grad(y, leaf, gy)[0])
    assert grads[0].stride() == grads[1].stride() or c == 1
    assert torch.equal(grads[0], grads[1])
    assert torch.equal(grads[0].signbit(), grads[1].signbit())


# NCHW 2x2 pools over rows of 5-7 outputs run 8 wide (max_pool_rows_2x2_padded: each row's 8th
# output and its inputs belong to the next row, rewritten when it comes; a plane's last row runs
# in the plain loop): planes of 10-16 columns, odd sizes (a last input row or column in no window),
# ceil_mode (a last, clipped row of windows), ties, NaN and -inf at the rows' ends.
PADDED_ROWS = [
    (2, 5, 10, 10, False),
    (3, 3, 12, 13, False),
    (4, 3, 14, 14, False),  # the autoencoder's second pool (7 outputs a row)
    (1, 9, 15, 15, True),
    (2, 2, 9, 14, False),
    (1, 3, 2, 14, False),  # one row of windows: none 8 wide
]


@pytest.mark.skipif(
    "cpu" not in grid_backends(torch.float32), reason="the C++ extension genkern._C is not built"
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("act", [("", 0.0), ("relu", 0.0), ("leaky_relu", 0.2)], ids=str)
@pytest.mark.parametrize("case", PADDED_ROWS, ids=_id)
def test_max_pool_2x2_rows_of_5_to_7_are_stocks(case, act, dtype):
    n, c, h, w, ceil = case
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-3, 4, (n, c, h, w), generator=g).to(dtype)  # ties on a coarse grid
    x[0, 0, :, -1] = float("nan")  # each row's last column
    x[0, -1, -1, :] = float("-inf")  # a plane's last row
    x[-1, 0, 0, 2 * (w // 2) - 2 :] = float("nan")  # the first row's last window
    name, slope = act
    stock_act = {"": lambda t: t, "relu": F.relu, "leaky_relu": lambda t: F.leaky_relu(t, slope)}
    kw = dict(kernel_size=2, ceil_mode=ceil)
    leaf = x.clone().requires_grad_()
    ref_leaf = x.clone().requires_grad_()
    y, idx = genkern.ops.max_pool2d(
        leaf,
        **kw,
        activation=name or None,
        negative_slope=slope,
        return_indices=True,
        backend="cpu",
    )
    ry, ridx = F.max_pool2d(ref_leaf, **kw, return_indices=True)
    ry = stock_act[name](ry)
    torch.testing.assert_close(y, ry, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(idx, ridx)
    gy = torch.randn(y.shape, generator=g).to(dtype)
    assert torch.equal(
        torch.autograd.grad(y, leaf, gy)[0], torch.autograd.grad(ry, ref_leaf, gy)[0]
    )
    with torch.no_grad():  # the inference path: no index tracked
        y2 = genkern.ops.max_pool2d(x, **kw, activation=name or None, negative_slope=slope)
    torch.testing.assert_close(y2, ry.detach(), rtol=0, atol=0, equal_nan=True)


@pytest.mark.skipif(
    "cpu" not in grid_backends(torch.float32), reason="the C++ extension genkern._C is not built"
)
def test_max_pool_backward_refuses_tap_codes_where_they_do_not_apply():
    from genkern import _ext

    # an NCHW input gradient (2x2 / 2 windows); a channels_last one with overlapping windows
    nchw = torch.empty(1, 2, 4, 4)
    cl = torch.empty(1, 2, 4, 4, memory_format=torch.channels_last)
    for gi, stride in ((nchw, 2), (cl, 1)):
        o = (4 - 2) // stride + 1
        gy = torch.randn(1, 2, o, o)
        codes = torch.zeros(1, 2, o, o, dtype=torch.uint8)
        with pytest.raises(RuntimeError, match="tap codes need channels_last"):
            _ext._C.max_pool2d_backward_cpu(
                gy, None, codes, gi, [2, 2], [stride, stride], [0, 0], [1, 1], 0, 0.0
            )


# The NCHW float32 2x2 tile kernels (pool_2x2_rows.cpp: max pool's backward, x2 upsampling both
# ways), 16 windows a vector with whole vectors past each row's end: rows of 1 to 33 windows (one
# vector, exactly one, one and a bit, two and a bit), one thread and two (ranges ending mid-plane,
# where the masked last rows take over), ties, NaN and -0 gradients.
ROWS_2X2 = [
    (3, 2, 2, 2),
    (2, 3, 10, 4),
    (2, 2, 14, 14),
    (1, 3, 6, 16),
    (2, 2, 4, 30),
    (1, 2, 6, 32),
    (2, 1, 4, 34),
    (1, 1, 40, 36),
    (1, 2, 6, 66),
]


@pytest.mark.skipif(
    "cpu" not in grid_backends(torch.float32), reason="the C++ extension genkern._C is not built"
)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", ROWS_2X2, ids=str)
def test_2x2_row_kernels_are_stocks_bits(shape, threads):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-3, 4, shape, generator=g).float()  # ties on a coarse grid
    x[0, 0, 0, 0] = float("nan")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for act, stock_act in [(None, lambda t: t), ("relu", F.relu)]:
            kw = {"activation": act} if act else {}
            grads = []
            for fn in (
                lambda t: genkern.ops.max_pool2d(t, 2, backend="cpu", **kw),
                lambda t: stock_act(F.max_pool2d(t, 2)),
            ):
                leaf = x.detach().clone().requires_grad_()
                y = fn(leaf)
                gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
                gy[..., -1] = -0.0  # becomes +0, as in a scatter-add into zeros
                grads.append(torch.autograd.grad(y, leaf, gy)[0])
            assert torch.equal(grads[0].nan_to_num(), grads[1].nan_to_num())
            assert torch.equal(grads[0].signbit(), grads[1].signbit())
        up = torch.randn(shape, generator=g).requires_grad_()
        y = genkern.ops.upsample_nearest2d(up, 2, backend="cpu")
        stock = F.interpolate(up, scale_factor=2, mode="nearest")
        assert torch.equal(y, stock)
        gy = torch.randn(y.shape, generator=g)
        assert torch.equal(torch.autograd.grad(y, up, gy)[0], torch.autograd.grad(stock, up, gy)[0])
    finally:
        torch.set_num_threads(before)


# The NCHW float32 2x2 max pool over rows of 1-16 windows (pool_2x2_groups.cpp): groups of
# 16 // OW window rows of a plane a vector (a plane's last group shorter), whole vectors past each
# group's end except where they would reach past a thread's range (masked). Planes of one row to
# many, OW dividing 16 or not, and enough groups (over 256) that two threads split them mid-plane;
# ties, NaN, -inf and -0 gradients; each activation the pool stores; indices and the inference
# path (no indices) too.
GROUPS_2X2 = [
    (1, 1, 1, 1),
    (3, 5, 3, 1),
    (2, 300, 5, 2),
    (4, 70, 3, 3),
    (2, 130, 4, 4),
    (1, 2, 5, 5),
    (2, 150, 7, 7),  # the autoencoder's second pool
    (1, 300, 2, 8),
    (2, 150, 3, 9),
    (1, 3, 1, 15),
    (1, 20, 14, 14),  # the autoencoder's first
    (1, 30, 16, 16),
]


@pytest.mark.skipif(
    "cpu" not in grid_backends(torch.float32), reason="the C++ extension genkern._C is not built"
)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", GROUPS_2X2, ids=str)
def test_2x2_max_pool_groups_are_stocks_bits(shape, threads):
    n, c, oh, ow = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-3, 4, (n, c, 2 * oh, 2 * ow), generator=g).float()  # ties on a coarse grid
    x[0, 0, 0, 0] = float("nan")
    x[-1, -1, -1, -2:] = float("nan")  # the last window's lower taps: the last NaN wins
    x[0, -1] = float("-inf")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for act, slope in [(None, 0.0), ("relu", 0.0), ("leaky_relu", 0.2), ("leaky_relu", -0.5)]:
            stock_act = {None: lambda t: t, "relu": F.relu}.get(
                act, lambda t: F.leaky_relu(t, slope)
            )
            leaf = x.clone().requires_grad_()
            y, idx = genkern.ops.max_pool2d(
                leaf, 2, activation=act, negative_slope=slope, return_indices=True, backend="cpu"
            )
            ref_leaf = x.clone().requires_grad_()
            ry, ridx = F.max_pool2d(ref_leaf, 2, return_indices=True)
            ry = stock_act(ry)
            torch.testing.assert_close(y, ry, rtol=0, atol=0, equal_nan=True)
            assert torch.equal(idx, ridx)
            gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
            gy[..., -1] = -0.0  # becomes +0, as in a scatter-add into zeros
            grads = [torch.autograd.grad(t, s, gy)[0] for t, s in ((y, leaf), (ry, ref_leaf))]
            assert torch.equal(grads[0], grads[1])
            assert torch.equal(grads[0].signbit(), grads[1].signbit())
            with torch.no_grad():  # the inference path: no indices
                y2 = genkern.ops.max_pool2d(x, 2, activation=act, negative_slope=slope)
            torch.testing.assert_close(y2, ry.detach(), rtol=0, atol=0, equal_nan=True)
        # an activation the kernel's backward does not take (applied in a pass of its own)
        leaf, ref_leaf = x.clone().requires_grad_(), x.clone().requires_grad_()
        y = genkern.ops.max_pool2d(leaf, 2, activation="tanh", backend="cpu")
        ry = torch.tanh(F.max_pool2d(ref_leaf, 2))
        torch.testing.assert_close(y, ry, equal_nan=True)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(
            torch.autograd.grad(y, leaf, gy)[0],
            torch.autograd.grad(ry, ref_leaf, gy)[0],
            equal_nan=True,  # tanh's NaN at a NaN maximum
        )
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int32, torch.int64])
def test_integer_images_pool_as_stock(dtype):
    # found by fuzz round 11a: stock's max pool takes integer images (uint8 upsampling and int64
    # average pooling too); genkern refused them: they run stock's ops (no gradient to fuse)
    x = torch.randint(-20 if dtype.is_signed else 0, 100, (2, 3, 8, 6)).to(dtype)
    y, idx = genkern.ops.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True)
    ry, ridx = F.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True)
    assert y.dtype == dtype and torch.equal(y, ry) and torch.equal(idx, ridx)
    assert torch.equal(genkern.ops.max_pool2d(x, 2, activation="relu"), F.relu(F.max_pool2d(x, 2)))
    model = genkern.nn.convert(torch.nn.Sequential(torch.nn.ReLU(), torch.nn.MaxPool2d(2)))
    assert torch.equal(model(x), F.max_pool2d(F.relu(x), 2))
    for ours, stock in (
        (lambda: genkern.ops.upsample_nearest2d(x, 2), lambda: F.interpolate(x, scale_factor=2)),
        (lambda: genkern.ops.avg_pool2d(x, 2), lambda: F.avg_pool2d(x, 2)),
    ):
        try:
            want = stock()
        except NotImplementedError as exc:  # stock's own refusal, word for word
            with pytest.raises(NotImplementedError, match=re.escape(str(exc))):
                ours()
        else:
            assert torch.equal(ours(), want)
