"""The cpu backend's batched-GEMM conv path (csrc/cpu/conv_gemm.h, switched by
genkern/ops/_conv_gemm.py): conv_transpose2d forward (GEMM + col2im) and backward (im2col +
GEMMs) over the whole batch, and conv2d through the same two (its forward is the transposed conv's
input gradient). Every one-group shape of the conv_transpose2d and conv2d grids is run through it
with mode "always" (the few-channel col2im path off, so that nothing bypasses it); the measured
rule ("auto") is pinned on the layers it is for; chunks of the batch are covered by a batch whose
column buffer spans several."""

import pytest
import test_conv2d as c2
import test_conv_transpose2d as ct
import torch
import torch.nn.functional as F
from _helpers import check_against_reference_unmodified, check_mode_switch
from conftest import DEVICE
from test_col2im_path import _conv_fns, _on_cpu

import genkern
from genkern import _ext, backends, testing
from genkern.ops import _col2im, _conv_gemm, _fused, _prepacked

pytestmark = pytest.mark.skipif(
    backends.unavailable_reason("cpu", torch.device("cpu"), torch.float64) is not None,
    reason="the C++ extension genkern._C is not built",
)

ONE_GROUP_CONVT = [case for case in ct.SHAPES if case[9] == 1]
ONE_GROUP_CONV = [case for case in c2.SHAPES if case[9] == 1]
ACTS = [(None, 0.01), ("relu", 0.01), ("leaky_relu", -0.1), ("tanh", 0.01)]


@pytest.fixture
def always():
    with _col2im.mode("never"), _conv_gemm.mode("always"):
        yield


def _weight_in(inputs, weight_layout):
    """inputs with the weight in weight_layout: a channels_last weight switches the path to its
    (kh, kw, c) column order (NHWC col2im and im2col)."""
    x, w, b = inputs
    if weight_layout == "channels_last":
        w = w.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    return [x, w, b]


@pytest.mark.parametrize("weight_layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("layout", testing.LAYOUTS)
@pytest.mark.parametrize("act,slope", ACTS)
@pytest.mark.parametrize("case", ONE_GROUP_CONVT, ids=ct._case_id)
def test_conv_transpose2d_float64(case, act, slope, layout, weight_layout, always):
    inputs, kw = ct._make(case, torch.float64, layout, device="cpu")
    inputs = _weight_in(inputs, weight_layout)
    assert _ext._C.use_conv_gemm(inputs[0], inputs[1], 1)
    fn, ref = ct._fns(kw, act, slope, "cpu")
    check_against_reference_unmodified(fn, ref, inputs, torch.float64, "cpu conv GEMM")


@pytest.mark.parametrize("weight_layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("layout", testing.LAYOUTS)
@pytest.mark.parametrize("act,slope", ACTS)
@pytest.mark.parametrize("case", ONE_GROUP_CONV, ids=c2._case_id)
def test_conv2d_float64(case, act, slope, layout, weight_layout, always):
    inputs, kw = c2._make(case, torch.float64, layout)
    inputs = _weight_in(_on_cpu(inputs), weight_layout)
    x, w, _ = inputs
    y = torch.nn.functional.conv2d(x.detach(), w.detach(), **kw)
    assert _ext._C.use_conv2d_gemm(x, w, 1, y.shape[2] * y.shape[3]) == (y.numel() > 0)
    check_against_reference_unmodified(
        *_conv_fns(kw, act, slope), inputs, torch.float64, "cpu conv2d GEMM"
    )


@pytest.mark.parametrize("fast_eager", [True, False])  # the C++ path, the custom op
@pytest.mark.parametrize("transposed", [True, False])
@pytest.mark.parametrize("layouts", ["ccc", "lll", "lcc", "clc", "ccl", "llc"])
def test_layouts_of_results_match_stock(layouts, transposed, always, fast_eager, monkeypatch):
    # a channels_last model's layer (weight channels_last too), an NCHW one and their mixes with
    # the output gradient's layout (c: contiguous, l: channels_last, for x, the weight and the
    # output gradient): output, input gradient and weight gradient in the layouts stock PyTorch
    # gives them (found by a fuzz: the gradients followed x's and the weight's own layouts; stock
    # puts both in channels_last where either is)
    monkeypatch.setattr(_fused, "FAST_EAGER", fast_eager)
    gen = torch.Generator().manual_seed(0)
    fmt = [torch.channels_last if c == "l" else torch.contiguous_format for c in layouts]
    x = torch.randn(3, 6, 4, 4, generator=gen).contiguous(memory_format=fmt[0]).requires_grad_()
    w = torch.randn(6, 5, 4, 4, generator=gen).contiguous(memory_format=fmt[1]).requires_grad_()
    ours_op, stock_op = (
        (genkern.ops.conv_transpose2d, F.conv_transpose2d)
        if transposed
        else (genkern.ops.conv2d, F.conv2d)
    )
    if not transposed:  # [C_out, C_in = 6, 4, 4]
        w = w.detach().permute(1, 0, 2, 3).contiguous(memory_format=fmt[1]).requires_grad_()
    ours, stock = ours_op(x, w, None, 2, 1, backend="cpu"), stock_op(x, w, None, 2, 1)
    g = torch.randn(ours.shape, generator=gen).contiguous(memory_format=fmt[2])
    results = [(ours, *torch.autograd.grad(ours, (x, w), g))]
    results.append((stock, *torch.autograd.grad(stock, (x, w), g)))
    for a, b in zip(*results):
        assert a.stride() == b.stride()
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradcheck(layout, always):
    (x, w, b), kw = c2._make((2, 3, 6, 5, 4, 3, 2, 1, 2, 1, True), torch.float64, layout)
    assert torch.autograd.gradcheck(_conv_fns(kw, "silu", 0.01)[0], _on_cpu([x, w, b]), eps=1e-6)
    inputs, kw = ct._make(
        (2, 3, 3, 4, 2, 3, 2, 1, 1, 1, 1, True), torch.float64, layout, device="cpu"
    )
    fn = ct._fns(kw, "tanh", 0.01, "cpu")[0]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


def _dcgan_g2(layout, batch=3, cin=512, size=4, cout=8):
    """A DCGAN generator's second layer (512 -> .., 4x4 -> 8x8), few output channels and samples."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cin, size, size, generator=gen)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(cin, cout, 4, 4, generator=gen) * cin**-0.5
    b = torch.randn(cout, generator=gen)
    return [t.requires_grad_() for t in (x, w, b)], dict(stride=2, padding=1)


def _gemm_matches_onednn_layouts(fn, inputs):
    """The output's and the input gradient's layouts on the GEMM path (mode always), checked to
    be those of the oneDNN path (mode never); returns the output's strides."""
    x = inputs[0]
    results = {}
    for name in ("always", "never"):
        with _conv_gemm.mode(name):
            y = fn(*inputs)
            gx = torch.autograd.grad(y, x, torch.ones_like(y))[0]
            results[name] = (y.stride(), gx.stride())
    assert results["always"] == results["never"]
    return results["always"][0]


# The rule takes its shapes only where ATen's GEMMs run vectors as wide as oneDNN's convs (not
# MKL's AVX2 code on an AMD AVX-512 CPU, test_small_gemm.py::test_blas_width); the float32 checks
# run the GEMM path on every CPU.
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_auto_rule_float32(layout):
    inputs, kw = _dcgan_g2(layout)
    x, w, _ = inputs
    with _conv_gemm.mode("auto"):
        assert _ext._C.use_conv_gemm(x, w, 1) == _ext._C.blas_as_wide_as_onednn()
        assert not _ext._C.use_conv_gemm(x.double(), w.double(), 1)  # float64: oneDNN
    fn, ref = ct._fns(kw, "relu", 0.01, "cpu")
    with _conv_gemm.mode("always"):
        testing.check_against_reference(fn, ref, inputs, torch.float32, "cpu conv GEMM float32")
    strides = _gemm_matches_onednn_layouts(fn, inputs)
    assert strides == F.conv_transpose2d(*inputs, **kw).stride()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_auto_rule_conv2d_float32(layout):
    # a DCGAN discriminator's 4th layer (.. -> 512 channels, 8x8 -> 4x4), few input channels
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, 8, 8, generator=gen)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(512, 8, 4, 4, generator=gen) * 0.1
    b = torch.randn(512, generator=gen)
    inputs, kw = [t.requires_grad_() for t in (x, w, b)], dict(stride=2, padding=1)
    fn, ref = _conv_fns(kw, "leaky_relu", 0.2)
    with _conv_gemm.mode("auto"):
        assert _ext._C.use_conv2d_gemm(x, w, 1, 16) == _ext._C.blas_as_wide_as_onednn()
        assert not _ext._C.use_conv2d_gemm(x, w, 1, 64)  # 8x8 outputs
        assert not _ext._C.use_conv2d_gemm(x, w[:256], 1, 16)  # 256 output channels
    with _conv_gemm.mode("always"):
        testing.check_against_reference(fn, ref, inputs, torch.float32, "cpu conv2d GEMM float32")
    strides = _gemm_matches_onednn_layouts(fn, inputs)
    assert strides == F.conv2d(*inputs, **kw).stride()


def test_rule_leaves_other_layers_to_onednn():
    x = torch.zeros(2, 512, 4, 4)
    with _conv_gemm.mode("auto"):
        assert not _ext._C.use_conv_gemm(x[:, :256], torch.zeros(256, 128, 4, 4), 1)  # C_in
        assert not _ext._C.use_conv_gemm(torch.zeros(2, 512, 8, 8), torch.zeros(512, 8, 4, 4), 1)
        assert not _ext._C.use_conv_gemm(x, torch.zeros(512, 8, 4, 4), 2)  # groups
        assert not _ext._C.use_conv_gemm(x.bfloat16(), torch.zeros(512, 8, 4, 4).bfloat16(), 1)
    with _conv_gemm.mode("never"):
        assert not _ext._C.use_conv_gemm(x, torch.zeros(512, 8, 4, 4), 1)


def test_batch_in_several_chunks():
    # 512 -> 256 channels of 4x4 taps over 4x4 inputs: the 8 MB column buffer holds 32 samples,
    # so a batch of 70 runs in three chunks (the weight gradient summed over them)
    inputs, kw = _dcgan_g2("contiguous", batch=70, cout=256)
    with _col2im.mode("never"), _conv_gemm.mode("always"):
        fn, ref = ct._fns(kw, "relu", 0.01, "cpu")
        testing.check_against_reference(fn, ref, inputs, torch.float32, "cpu conv GEMM chunks")


def test_mode_names():
    check_mode_switch(_conv_gemm, "conv GEMM", _ext._C.conv_gemm_mode)


@pytest.mark.skipif(DEVICE != "cpu", reason="the ops' opcheck tests build their inputs on DEVICE")
@pytest.mark.parametrize("act,slope", [(None, 0.01), ("leaky_relu", 0.2), ("silu", 0.01)])
def test_opcheck_through_the_path(act, slope, always):
    ct.test_opcheck("cpu", act, slope)
    c2.test_opcheck("cpu", act, slope)


@pytest.mark.parametrize(
    "kw",
    [
        dict(stride=2, padding=1),
        dict(stride=3, padding=2, output_padding=1, dilation=2),
        dict(stride=1, padding=0, dilation=3),
        dict(stride=(2, 1), padding=(0, 2)),
    ],
)
def test_both_column_orders_give_the_same_bits(kw, always):
    # col2im scatters NCHW planes and gathers NHWC pixels: each output adds its taps in the same
    # order, so a channels_last weight changes the layout, never the bits
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 24, 5, 6, generator=gen)
    w = torch.randn(24, 5, 3, 4, generator=gen)
    b = torch.randn(5, generator=gen)
    w_cl = w.contiguous(memory_format=torch.channels_last)
    # (not the packed oneDNN weight, which auto times against this path on the first call: a
    # loaded machine let it win for one layout only)
    with torch.no_grad(), _prepacked.mode("never"):
        y = genkern.ops.conv_transpose2d(x, w, b, backend="cpu", **kw)
        y_cl = genkern.ops.conv_transpose2d(x, w_cl, b, backend="cpu", **kw)
        ref = F.conv_transpose2d(x.double(), w.double(), b.double(), **kw)
    assert torch.equal(y.contiguous(), y_cl.contiguous())
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)
