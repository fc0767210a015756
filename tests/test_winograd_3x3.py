"""The cpu backend's Winograd F(2x2, 3x3) path for 3x3 stride-1 padding-1 convs
(csrc/cpu/winograd_3x3.h): an inference candidate of conv2d (calls that record no gradient), timed
against the other paths on a geometry's first call in auto mode, kept untimed in Winograd mode
"always", offered in no call under "never". The kernels against the float64 reference over a grid
of sizes (odd, one pixel, tiles cut by the edge, channel tails, a batch in several chunks) and
layouts; the candidate through genkern.nn.Conv2d against stock for every activation; non-finite
values and a weight update; geometries it cannot run never reach it."""

import pytest
import torch
import torch.nn.functional as F
from _helpers import assert_unchanged, clones

import genkern
from genkern import _ext, backends, testing
from genkern.ops import _prepacked, _winograd

pytestmark = pytest.mark.skipif(
    not _prepacked.AVAILABLE
    or backends.unavailable_reason("cpu", torch.device("cpu"), torch.float32) is not None,
    reason="needs the C++ extension and a torch built with oneDNN (mkldnn)",
)

C = _ext._C if _ext.HAS_CPU else None
ARGS = ([1, 1], [1, 1], [1, 1], 1)  # stride, padding, dilation, groups
# (batch, C_in, H, W, C_out): 2x2 tiles, odd sizes (tiles cut by the edge), one pixel, channel
# counts off the vector width (8 floats, 4 doubles), several images
SHAPES = [(1, 32, 16, 16, 64), (2, 5, 7, 9, 3), (1, 9, 1, 1, 17), (3, 8, 2, 3, 8), (1, 1, 5, 4, 1)]


@pytest.fixture(autouse=True)
def fresh_choices():
    """Each test from empty choices (entering a prepack mode clears them)."""
    with _prepacked.mode("auto"), _winograd.mode("auto"):
        yield


def _id(case):
    return "x".join(str(v) for v in case)


def _conv(x, w, b, fmt=torch.contiguous_format):
    """The Winograd kernels' result, or None where they declined the call."""
    return C.winograd_3x3_conv2d(x, C.winograd_3x3_pack_weight(w), b, fmt)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("layout", testing.LAYOUTS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", SHAPES, ids=_id)
def test_kernels_against_the_float64_reference(case, dtype, bias, layout, fmt):
    n, cin, h, w, cout = case
    gen = torch.Generator().manual_seed(sum(case))
    x = testing.make_tensor([n, cin, h, w], dtype, "cpu", layout, generator=gen)
    wt = testing.make_tensor([cout, cin, 3, 3], dtype, "cpu", layout, generator=gen)
    b = testing.make_tensor([cout], dtype, "cpu", generator=gen) if bias else None
    inputs = [x, wt, b]
    before = clones(inputs)
    assert C.winograd_3x3_available(x, wt, *ARGS)
    y = _conv(x, wt, b, fmt)
    ref = F.conv2d(x.double(), wt.double(), None if b is None else b.double(), padding=1)
    assert y.dtype == dtype and y.is_contiguous(memory_format=fmt)
    testing.assert_close_to_reference(y, ref, dtype, "Winograd 3x3")
    assert_unchanged(before, inputs)


def test_float32_error_is_stocks_order():
    """F(2, 3)'s transforms add and halve only: its float32 error stays within 2x of stock's on
    the CNN's layers (F(4, 3), left out, reached 12x)."""
    torch.manual_seed(0)
    for cin, cout, size in [(32, 64, 16), (64, 128, 8), (128, 128, 16)]:
        x = torch.randn(1, cin, size, size)
        w = torch.randn(cout, cin, 3, 3) / (9 * cin) ** 0.5
        ref = F.conv2d(x.double(), w.double(), padding=1)
        stock = (F.conv2d(x, w, padding=1).double() - ref).abs().max().item()
        ours = (_conv(x, w, None).double() - ref).abs().max().item()
        assert ours <= 2 * stock + 1e-7, (cin, cout, ours, stock)


def test_batch_in_several_chunks():
    """Batches whose transformed tiles pass the chunk bound run in several chunks, the last one
    shorter: each image as if it ran alone."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 64, 32, 32, generator=gen, dtype=torch.float64)
    w = torch.randn(64, 64, 3, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(64, generator=gen, dtype=torch.float64)
    y = _conv(x, w, b)
    testing.assert_close_to_reference(y, F.conv2d(x, w, b, padding=1), torch.float64, "chunks")
    for i in range(5):
        torch.testing.assert_close(y[i : i + 1], _conv(x[i : i + 1], w, b), rtol=0, atol=1e-12)


@pytest.mark.parametrize("where", ["input", "nan", "bias", "overflow"])
def test_non_finite_values_decline(where):
    """A transform mixes a tile's 16 inputs (inf - inf is NaN where the direct conv gives inf, a
    NaN would reach the tile's other outputs): the kernels decline, and the layer's inference
    call takes the regular path, with its infinities and NaNs where stock puts them."""
    torch.manual_seed(2)
    layer = genkern.nn.Conv2d(8, 8, 3, padding=1).eval()
    x = torch.randn(2, 8, 6, 6)
    if where == "input":
        x[0, 1, 2, 3], x[1, 2, 0, 0] = float("inf"), -float("inf")
    elif where == "nan":
        x[1, 0, 5, 5] = float("nan")
    elif where == "bias":
        with torch.no_grad():
            layer.bias[3] = float("inf")
    else:  # finite inputs whose transform overflows (d0 - d2 past float32's range)
        x[0, 0, 1, 1], x[0, 0, 3, 1] = 3e38, -3e38
    assert _conv(x, layer.weight.detach(), layer.bias.detach()) is None
    stock = F.conv2d(x, layer.weight, layer.bias, padding=1)
    with _winograd.mode("always"), torch.no_grad():
        y = layer(x)
    torch.testing.assert_close(y, stock, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert torch.equal(y.isnan(), stock.isnan()) and torch.equal(y.isinf(), stock.isinf())


def _layer(cin, cout, act, bias=True):
    return genkern.nn.Conv2d(cin, cout, 3, padding=1, bias=bias, activation=act).eval()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("act", [None, "relu", "leaky_relu", "tanh", "sigmoid", "silu"])
def test_the_candidate_matches_stock(act, layout):
    """Winograd mode "always" keeps the candidate untimed: the layer's inference output is
    stock's (every activation after it, bias or not) in stock's layout, bit-identical from call
    to call."""
    torch.manual_seed(3)
    fmt = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}[layout]
    for bias in (True, False):
        layer = _layer(16, 24, act, bias).to(memory_format=fmt)
        x = torch.randn(2, 16, 9, 7).contiguous(memory_format=fmt)
        with _winograd.mode("always"), torch.no_grad():
            y = layer(x)
            assert _prepacked.state(layer.weight) == "winograd"
            assert torch.equal(layer(x), y)
        z = F.conv2d(x, layer.weight, layer.bias, padding=1)
        stock = genkern.reference.activation(z, act, layer.negative_slope)
        torch.testing.assert_close(y, stock, rtol=1e-5, atol=1e-5)
        assert y.stride() == stock.stride()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_one_pixel_outputs_have_stocks_strides(layout):
    """An [N, C, 1, 1] result is contiguous in both formats: stock's strides are NCHW's, where the
    kernels' NHWC buffer had given (C, 1, C, C) (found by a fuzz)."""
    x = torch.randn(3, 4, 1, 1)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(5, 4, 3, 3)
    with _winograd.mode("always"), torch.no_grad():
        y = genkern.ops.conv2d(x, w, None, padding=1, backend="cpu")
    stock = F.conv2d(x, w, None, padding=1)
    torch.testing.assert_close(y, stock, rtol=1e-5, atol=1e-5)
    assert y.stride() == stock.stride()


def test_auto_mode_offers_it_and_never_withdraws_it():
    """Auto mode times the candidate with the others (its choice is one of them, its result
    stock's); "never" offers it to no call, and a kept Winograd choice is timed again."""
    torch.manual_seed(4)
    layer = _layer(32, 64, "relu")
    x = torch.randn(1, 32, 16, 16)
    stock = F.relu(F.conv2d(x, layer.weight, layer.bias, padding=1))
    with _winograd.mode("always"), torch.no_grad():
        layer(x)
    assert _prepacked.state(layer.weight) == "winograd"
    with _winograd.mode("never"), torch.no_grad():
        torch.testing.assert_close(layer(x), stock, rtol=1e-5, atol=1e-5)
        assert _prepacked.state(layer.weight) not in (None, "winograd")
    with torch.no_grad():
        _prepacked.set_mode("auto")  # clears the choices: auto times again
        torch.testing.assert_close(layer(x), stock, rtol=1e-5, atol=1e-5)
    assert _prepacked.state(layer.weight) in ("regular", "packed", "gemm", "direct", "winograd")


def test_a_weight_update_retransforms():
    """The transformed weight follows the weight's values (the prepack cache's checks)."""
    torch.manual_seed(5)
    layer = _layer(8, 8, None)
    x = torch.randn(1, 8, 6, 6)
    with _winograd.mode("always"), torch.no_grad():
        layer(x)
        layer.weight.mul_(-2.0)
        torch.testing.assert_close(
            layer(x), F.conv2d(x, layer.weight, layer.bias, padding=1), rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(stride=2, padding=1),
        dict(padding=2, dilation=2),
        dict(padding=1, groups=2),
        dict(padding=0),
        dict(padding=1, kernel=5),
    ],
    ids=["stride", "dilation", "groups", "padding", "kernel"],
)
def test_other_geometries_never_reach_it(kwargs):
    kwargs = dict(kwargs)
    kernel = kwargs.pop("kernel", 3)
    layer = genkern.nn.Conv2d(4, 4, kernel, **kwargs).eval()
    x = torch.randn(1, 4, 8, 8)
    assert not C.winograd_3x3_available(
        x,
        layer.weight,
        list(layer.stride),
        [kwargs.get("padding", 0)] * 2,
        list(layer.dilation),
        layer.groups,
    )
    with _winograd.mode("always"), torch.no_grad():
        y = layer(x)
    assert _prepacked.state(layer.weight) != "winograd"
    stock = F.conv2d(
        x, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups
    )
    torch.testing.assert_close(y, stock, rtol=1e-5, atol=1e-5)


def test_bad_bias_is_declined_and_raises_as_stock():
    """A bias of another dtype or size never reaches the kernels' reads: they decline, and the
    call raises as stock's does."""
    x, w = torch.randn(1, 4, 5, 5), torch.randn(6, 4, 3, 3)
    packed = C.winograd_3x3_pack_weight(w)
    for b in (torch.randn(6, dtype=torch.float64), torch.randn(5), torch.randn(2, 3)):
        assert C.winograd_3x3_conv2d(x, packed, b, torch.contiguous_format) is None
    with _winograd.mode("always"), torch.no_grad(), pytest.raises(RuntimeError):
        genkern.ops.conv2d(x, w, torch.randn(5), padding=1, backend="cpu")


@pytest.mark.parametrize("tap", [0.5, 30.0, 1e4, 1e30])
def test_a_weight_with_an_outlying_tap(tap):
    """A transform's rounding scales with a filter's largest tap: one far above the rest that
    meets only the padding (an image one pixel high) swamped the outputs the small taps make
    (found by a fuzz: 0.32 off at outputs of 0.74 for a tap of 1e30). A weight whose largest
    magnitude passes 64x the mean of the others is declined; below that the path runs, within
    the float32 tolerance. Either way the layer's result is the reference's."""
    torch.manual_seed(0)
    layer = _layer(8, 4, None)
    with torch.no_grad():
        layer.weight[1, 2, 0, 1] = tap
    x = torch.randn(1, 8, 1, 6)
    declined = C.winograd_3x3_pack_weight(layer.weight.detach()).numel() == 0
    assert declined == (tap > 64 * layer.weight.abs().mean().item())
    ref = F.conv2d(x.double(), layer.weight.double(), layer.bias.double(), padding=1)
    with _winograd.mode("always"), torch.no_grad():
        y = layer(x)
    testing.assert_close_to_reference(y, ref, torch.float32, "outlying tap")
