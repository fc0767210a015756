"""The cpu backend's Winograd path for 4x4 stride-2 padding-1 convs and transposed convs
(csrc/cpu/winograd_s2.h, switched by genkern/ops/_winograd.py): the forward of either direction,
the input gradient of either (the other direction's forward) and the weight gradient. Mode
"always" sends every float32/float64 call of this geometry through it: a grid of sizes (odd,
smaller than a tile, over several tiles, channel counts off the vector width), layouts and
activations against the float64 reference (every gradient); gradcheck and opcheck through it;
non-finite values fall back to the direct path so that infinities and NaNs land where it puts
them; the measured rule ("auto") is pinned."""

import pytest
import test_conv2d as c2
import test_conv_transpose2d as ct
import torch
import torch.nn.functional as F
from _helpers import check_against_reference_unmodified, check_mode_switch
from conftest import DEVICE
from test_col2im_path import _conv_fns

import genkern
from genkern import _ext, backends, testing
from genkern.ops import _fused, _winograd

pytestmark = pytest.mark.skipif(
    backends.unavailable_reason("cpu", torch.device("cpu"), torch.float64) is not None,
    reason="the C++ extension genkern._C is not built",
)

KW = dict(stride=2, padding=1)
ACTS = [(None, 0.01), ("relu", 0.01), ("leaky_relu", 0.2), ("tanh", 0.01)]
# (batch, C_in, H, W, C_out, bias): tiles of 4 outputs (8 for the transposed conv), partial ones,
# inputs smaller than a tile, 1-9 channels (vector tails of 8 floats and 4 doubles)
SHAPES = [
    (2, 3, 8, 8, 5, True),
    (1, 9, 9, 7, 4, False),
    (3, 4, 2, 2, 3, True),
    (2, 8, 13, 6, 1, True),
    (1, 1, 17, 18, 9, False),
]


@pytest.fixture
def always():
    with _winograd.mode("always"):
        yield


def _id(case):
    return "x".join(str(v) for v in case)


def _inputs(case, dtype, layout, weight_layout, transposed, seed=0):
    n, cin, h, w, cout, bias = case
    gen = torch.Generator().manual_seed(seed)
    x = testing.make_tensor([n, cin, h, w], dtype, "cpu", layout, True, generator=gen)
    shape = [cin, cout, 4, 4] if transposed else [cout, cin, 4, 4]
    wt = testing.make_tensor(shape, dtype, "cpu", weight_layout, True, generator=gen)
    b = testing.make_tensor([cout], dtype, "cpu", "contiguous", True, generator=gen)
    return [x, wt, b if bias else None]


def _convt_fns(act, slope, output_padding=0):
    return ct._fns(dict(KW, output_padding=output_padding), act, slope, "cpu")


@pytest.mark.parametrize("weight_layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("layout", testing.LAYOUTS)
@pytest.mark.parametrize("act,slope", ACTS)
@pytest.mark.parametrize("case", SHAPES, ids=_id)
def test_conv2d_float64(case, act, slope, layout, weight_layout, always):
    inputs = _inputs(case, torch.float64, layout, weight_layout, transposed=False)
    assert _ext._C.use_winograd_s2(inputs[0], inputs[1], [2, 2], [1, 1], [1, 1], 1, False)
    fn, ref = _conv_fns(KW, act, slope)
    check_against_reference_unmodified(fn, ref, inputs, torch.float64, "cpu Winograd conv2d")


@pytest.mark.parametrize("output_padding", [0, 1])
@pytest.mark.parametrize("weight_layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("layout", testing.LAYOUTS)
@pytest.mark.parametrize("act,slope", ACTS)
@pytest.mark.parametrize("case", SHAPES, ids=_id)
def test_conv_transpose2d_float64(case, act, slope, layout, weight_layout, output_padding, always):
    inputs = _inputs(case, torch.float64, layout, weight_layout, transposed=True)
    assert _ext._C.use_winograd_s2(inputs[0], inputs[1], [2, 2], [1, 1], [1, 1], 1, True)
    fn, ref = _convt_fns(act, slope, output_padding)
    check_against_reference_unmodified(fn, ref, inputs, torch.float64, "cpu Winograd convT")


def _dcgan_layer(transposed, batch=4, cin=64, size=8, cout=64, seed=0):
    """A DCGAN middle layer's geometry at a small batch, weights scaled as a trained net's."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cin, size, size, generator=gen).contiguous(
        memory_format=torch.channels_last
    )
    shape = (cin, cout, 4, 4) if transposed else (cout, cin, 4, 4)
    w = (torch.randn(*shape, generator=gen) * (16 * cin) ** -0.5).contiguous(
        memory_format=torch.channels_last
    )
    b = torch.randn(cout, generator=gen)
    return [t.requires_grad_() for t in (x, w, b)]


@pytest.mark.parametrize("transposed", [False, True])
def test_float32_many_channels(transposed, always):
    # K = 4 x 256 products summed per point: the float32 tolerance holds at a real layer's depth
    inputs = _dcgan_layer(transposed, cin=256, cout=128)
    fn, ref = _convt_fns("relu", 0.01) if transposed else _conv_fns(KW, "leaky_relu", 0.2)
    check_against_reference_unmodified(fn, ref, inputs, torch.float32, "cpu Winograd float32")


@pytest.mark.parametrize("transposed", [False, True])
def test_batch_in_several_chunks(transposed, always):
    # 64 channels over 32x32 (conv2d) or 16x16 (transposed) inputs: 102,400 transformed floats per
    # image against chunks of half the input's floats (at least 512K): 5-13 images per chunk, a
    # batch of 43 in 4 to 9 of them, the last one shorter
    inputs = _dcgan_layer(transposed, batch=43, size=16 if transposed else 32, cout=8)
    fn, ref = _convt_fns(None, 0.01) if transposed else _conv_fns(KW, None, 0.01)
    check_against_reference_unmodified(fn, ref, inputs, torch.float32, "cpu Winograd chunks")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradcheck(layout, always):
    (x, w, b) = _inputs((2, 3, 5, 6, 2, True), torch.float64, layout, layout, False)
    fn = _conv_fns(KW, "silu", 0.01)[0]
    assert torch.autograd.gradcheck(fn, (x, w, b), eps=1e-6, atol=1e-5)
    (x, w, b) = _inputs((2, 3, 3, 4, 2, True), torch.float64, layout, layout, True)
    fn = _convt_fns("tanh", 0.01, output_padding=1)[0]
    assert torch.autograd.gradcheck(fn, (x, w, b), eps=1e-6, atol=1e-5)


@pytest.mark.skipif(DEVICE != "cpu", reason="the ops' opcheck tests build their inputs on DEVICE")
@pytest.mark.parametrize("act,slope", [(None, 0.01), ("leaky_relu", 0.2), ("silu", 0.01)])
def test_opcheck_through_the_path(act, slope, always):
    # the conv2d and conv_transpose2d opcheck tests run their DCGAN-style 4x4 s2 p1 case
    (x, w, _), kw = c2._make(c2.SHAPES[1], torch.float64, "contiguous")
    assert _ext._C.use_winograd_s2(x, w, [2, 2], [1, 1], [1, 1], 1, False)
    c2.test_opcheck("cpu", act, slope)
    (x, w, _), kw = ct._make(ct.SHAPES[1], torch.float64, "contiguous", device="cpu")
    assert (kw["stride"], kw["padding"], w.shape[2:]) == (2, 1, (4, 4))
    assert _ext._C.use_winograd_s2(x, w, [2, 2], [1, 1], [1, 1], 1, True)
    ct.test_opcheck("cpu", act, slope)


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("where", ["input", "weight", "bias", "overflow"])
def test_non_finite_values_land_where_the_direct_path_puts_them(where, transposed):
    # a transform mixes the 25 inputs of a tile: inf - inf would give NaN where a direct conv gives
    # inf, and a NaN would reach the tile's other outputs. Such calls run on the direct path.
    x, w, b = (t.detach() for t in _dcgan_layer(transposed, batch=2, cin=8, size=8, cout=8))
    if where == "input":
        x[0, 1, 2, 3], x[1, 0, 5, 5], x[1, 2, 0, 0] = float("inf"), float("nan"), -float("inf")
    elif where == "weight":
        w[0, 1, 2, 3] = float("inf")
    elif where == "bias":
        b[3] = float("nan")
    else:  # finite inputs whose transform overflows (2 (d0 - d2) past float32's range)
        x[0, 0, 2, 2], x[0, 0, 2, 6] = 3e38, -3e38
    before = [t.clone() for t in (x, w, b)]
    op = genkern.ops.conv_transpose2d if transposed else genkern.ops.conv2d
    results = {}
    for name in ("always", "never"):
        with _winograd.mode(name):
            xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
            y = op(xg, wg, b, **KW, backend="cpu")
            # the gradients take the same fallback
            g = torch.ones_like(y) if where != "overflow" else torch.full_like(y, 3e38)
            results[name] = (y, *torch.autograd.grad(y, (xg, wg), g))
    if where == "overflow":  # finite results, which Winograd's transform cannot give
        run = _ext._C.winograd_s2_conv_transpose2d if transposed else _ext._C.winograd_s2_conv2d
        size = (16, 16) if transposed else (4, 4)
        assert run(x, w, b, *size, torch.channels_last) is None
        assert results["never"][0].isfinite().all()
    else:
        assert not results["never"][0].isfinite().all()
    # the forward fell back (the same bits); the gradients too where their inputs are not finite
    torch.testing.assert_close(
        results["always"][0], results["never"][0], rtol=0, atol=0, equal_nan=True
    )
    for ours, direct in zip(results["always"][1:], results["never"][1:]):
        assert torch.equal(ours.isnan(), direct.isnan())
        assert torch.equal(ours.isinf(), direct.isinf())
        scale = direct.nan_to_num(0, 0, 0).abs().max().item()
        torch.testing.assert_close(ours, direct, rtol=1e-5, atol=1e-5 * scale, equal_nan=True)
    for a, c in zip(before, (x, w, b)):  # inputs unchanged
        torch.testing.assert_close(c, a, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("fast_eager", [True, False])  # the C++ path, the custom op
@pytest.mark.parametrize("transposed", [True, False])
@pytest.mark.parametrize("layouts", ["ccc", "lll", "lcc", "clc", "ccl", "llc"])
def test_layouts_of_results_match_stock(layouts, transposed, always, fast_eager, monkeypatch):
    # the output, input gradient and weight gradient in the strides stock PyTorch gives them, for
    # each mix of x's, the weight's and the output gradient's layouts (c: contiguous, l:
    # channels_last; found by a fuzz: a transposed conv's weight gradient followed the output
    # gradient's layout, stock's follows x's and the weight's alone)
    monkeypatch.setattr(_fused, "FAST_EAGER", fast_eager)
    fmt = [torch.channels_last if c == "l" else torch.contiguous_format for c in layouts]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, 5, 4, generator=gen).contiguous(memory_format=fmt[0]).requires_grad_()
    shape = (6, 5, 4, 4) if transposed else (5, 6, 4, 4)
    w = torch.randn(*shape, generator=gen).contiguous(memory_format=fmt[1]).requires_grad_()
    ours_op, stock_op = (
        (genkern.ops.conv_transpose2d, F.conv_transpose2d)
        if transposed
        else (genkern.ops.conv2d, F.conv2d)
    )
    ours, stock = ours_op(x, w, None, **KW, backend="cpu"), stock_op(x, w, None, **KW)
    g = torch.randn(ours.shape, generator=gen).contiguous(memory_format=fmt[2])
    results = [(ours, *torch.autograd.grad(ours, (x, w), g))]
    results.append((stock, *torch.autograd.grad(stock, (x, w), g)))
    for a, b in zip(*results):
        assert a.stride() == b.stride()
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def _eligible(x, w, transposed):
    return _ext._C.use_winograd_s2(x, w, [2, 2], [1, 1], [1, 1], 1, transposed)


def test_auto_rule():
    z = torch.zeros
    # its GEMMs are ATen's: only where they run vectors as wide as oneDNN's convs (not MKL's AVX2
    # code on an AMD AVX-512 CPU, test_small_gemm.py::test_blas_width)
    wide = _ext._C.blas_as_wide_as_onednn()
    with _winograd.mode("auto"):
        # DCGAN-64 at batch 64, 256+ tiles of the small side: the generator's 256 -> 128 (8x8 in)
        # and 128 -> 64, the discriminator's 64 -> 128 (16x16 out) and 128 -> 256 (8x8 out)
        assert _eligible(z(64, 256, 8, 8), z(256, 128, 4, 4), True) == wide
        assert _eligible(z(64, 128, 16, 16), z(128, 64, 4, 4), True) == wide
        assert _eligible(z(64, 64, 32, 32), z(128, 64, 4, 4), False) == wide
        assert _eligible(z(64, 128, 16, 16), z(256, 128, 4, 4), False) == wide
        # 64 tiles (the 512-channel layers at 4x4): their transformed weights cost memory and
        # time that 64 tiles do not pay back
        assert not _eligible(z(64, 512, 4, 4), z(512, 256, 4, 4), True)
        assert not _eligible(z(64, 256, 8, 8), z(512, 256, 4, 4), False)
        assert not _eligible(z(16, 256, 8, 8), z(256, 128, 4, 4), True)
        assert not _eligible(z(1, 128, 16, 16), z(128, 64, 4, 4), True)  # batch 1
        # 32 <-> 64 channels (an autoencoder's and a VAE's layers): oneDNN is faster
        assert not _eligible(z(256, 64, 7, 7), z(64, 32, 4, 4), True)
        assert not _eligible(z(128, 32, 14, 14), z(64, 32, 4, 4), False)
        # float64 and 16-bit: the direct path
        assert not _eligible(z(64, 128, 16, 16).double(), z(128, 64, 4, 4).double(), True)
        assert not _eligible(z(64, 128, 16, 16).bfloat16(), z(128, 64, 4, 4).bfloat16(), True)
    x, w = z(2, 8, 8, 8), z(8, 8, 4, 4)
    with _winograd.mode("always"):
        assert _eligible(x, w, False) and _eligible(x, w, True)
        assert not _eligible(x.bfloat16(), w.bfloat16(), False)  # float32 and float64 only
        assert not _eligible(x, z(8, 8, 3, 3), False)  # kernel 3
        assert not _eligible(x, z(8, 4, 4, 4), False)  # the weight's C_in is not x's
        assert not _ext._C.use_winograd_s2(x, w, [1, 1], [1, 1], [1, 1], 1, False)  # stride
        assert not _ext._C.use_winograd_s2(x, w, [2, 2], [0, 0], [1, 1], 1, False)  # padding
        assert not _ext._C.use_winograd_s2(x, w, [2, 2], [1, 1], [2, 2], 1, False)  # dilation
        assert not _ext._C.use_winograd_s2(x, w, [2, 2], [1, 1], [1, 1], 2, False)  # groups
        assert not _eligible(z(2, 8, 1, 5), w, False)  # a padded input smaller than the kernel
    with _winograd.mode("never"):
        assert not _eligible(x, w, False) and not _eligible(x, w, True)


@pytest.mark.parametrize("transposed", [False, True])
def test_auto_matches_the_direct_path(transposed):
    # a DCGAN-64 layer at batch 16 (256 tiles of the transposed conv's 16x16 input, of the
    # conv's 16x16 output), a shape the rule takes where ATen's GEMMs are as wide as oneDNN's:
    # float32 results within float32 rounding of oneDNN's
    inputs = _dcgan_layer(transposed, batch=16, cin=64, size=16 if transposed else 32, cout=64)
    with _winograd.mode("auto"):
        wide = _ext._C.blas_as_wide_as_onednn()
        assert _eligible(inputs[0], inputs[1], transposed) == wide
    results = {}
    for name in ("always", "never"):
        with _winograd.mode(name):
            assert _eligible(inputs[0], inputs[1], transposed) == (name == "always")
            fn, ref = _convt_fns("relu", 0.01) if transposed else _conv_fns(KW, "relu", 0.01)
            y = fn(*inputs)
            results[name] = (y, *torch.autograd.grad(y, inputs, torch.ones_like(y)))
    for a, b in zip(results["always"], results["never"]):
        assert a.stride() == b.stride()
        testing.assert_close_to_reference(a, b.double(), torch.float32, "Winograd vs direct")


def test_mode_names():
    check_mode_switch(_winograd, "Winograd conv", _ext._C.winograd_mode)


@pytest.mark.parametrize("transposed", [False, True])
def test_a_weight_with_outlying_taps_is_declined(transposed):
    """A transform's rounding scales with a filter's largest tap: taps of +-1e8 in rows that meet
    only the padding (an input two pixels high) left the conv2d 36.6 off at outputs the small taps
    make (found by a fuzz). Such a weight (a tap over 64x the mean of the others, as the 3x3 path)
    is declined: the result is the direct path's, within the float32 tolerance of the reference."""
    torch.manual_seed(0)
    w = torch.randn(4, 8, 4, 4)
    w[1, 2, 0, 1], w[1, 3, 3, 2] = 1e8, -1e8
    x = torch.randn(1, 8, 2, 8) if not transposed else torch.randn(1, 4, 1, 5)
    if transposed:
        assert _ext._C.winograd_s2_conv_transpose2d(x, w, None, 2, 10, torch.channels_last) is None
        ref = F.conv_transpose2d(x.double(), w.double(), None, **KW)
        op = genkern.ops.conv_transpose2d
    else:
        assert _ext._C.winograd_s2_conv2d(x, w, None, 1, 4, torch.channels_last) is None
        ref = F.conv2d(x.double(), w.double(), None, **KW)
        op = genkern.ops.conv2d
    with _winograd.mode("always"), torch.no_grad():
        y = op(x, w, None, **KW, backend="cpu")
    testing.assert_close_to_reference(y, ref, torch.float32, "outlying taps")
