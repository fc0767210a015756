"""The cpu backend's head kernels (csrc/cpu/head_convt.h, switched by genkern/ops/_head_convt.py):
float32 transposed convs onto a few channels, and conv2d input gradients from a few channels, on
direct AVX-512 kernels (AVX2 ones on CPUs without AVX-512; test_avx2_kernels_on_an_avx512_cpu
runs those on AVX-512 CPUs too) inside the few-channel col2im path. Every one-group shape of the
conv test grids is run through the path (col2im "always"); the geometry grid below covers what
the kernels do themselves: strides, paddings, output_padding past the padding, input rows longer
than a tile and samples longer than a band, every vector width of the footprint add, every layout
of x."""

import pytest
import test_conv2d as c2
import test_conv_transpose2d as ct
import torch
import torch.nn.functional as F
from _helpers import (
    assert_unchanged,
    check_against_reference_unmodified,
    check_mode_switch,
    clones,
    run_without_avx512,
)

import genkern
from genkern import _ext, backends, reference, testing
from genkern import activations as A
from genkern.ops import _col2im, _head_convt, _prepacked

pytestmark = [
    pytest.mark.skipif(
        backends.unavailable_reason("cpu", torch.device("cpu"), torch.float32) is not None,
        reason="the C++ extension genkern._C is not built",
    ),
    pytest.mark.skipif(
        not (_ext.HAS_CPU and _ext._C.avx2_kernels_enabled()),
        reason="the head kernels need an AVX2 CPU (GENKERN_CPU_NO_AVX2 unset)",
    ),
]
_AVX512 = _ext.HAS_CPU and _ext._C.avx512_kernels_enabled()  # (no extension: False)

ONE_GROUP_CONV = [case for case in c2.SHAPES if case[9] == 1]
ONE_GROUP_CONVT = [case for case in ct.SHAPES if case[9] == 1]


@pytest.fixture
def through_the_path():
    # inference calls would otherwise time the packed oneDNN path against this one and may keep
    # it (seen under a heavy load: then both calls of test_never_is_atens_kernel ran oneDNN)
    with _col2im.mode("always"), _head_convt.mode("auto"), _prepacked.mode("never"):
        yield


def _fits(x, w, kw) -> bool:
    pair = lambda v: list(v) if isinstance(v, tuple) else [v, v]
    return _ext._C.use_head_convt(
        x,
        w,
        kw.get("groups", 1),
        pair(kw["stride"]),
        pair(kw["padding"]),
        pair(kw.get("output_padding", 0)),
        pair(kw.get("dilation", 1)),
    )


@pytest.mark.parametrize("layout", testing.LAYOUTS)
@pytest.mark.parametrize("act,slope", [(None, 0.01), ("tanh", 0.01), ("leaky_relu", -0.1)])
@pytest.mark.parametrize("case", ONE_GROUP_CONVT, ids=ct._case_id)
def test_conv_transpose2d_grid_float32(case, act, slope, layout, through_the_path):
    inputs, kw = ct._make(case, torch.float32, layout, device="cpu")
    fn, ref = ct._fns(kw, act, slope, "cpu")
    check_against_reference_unmodified(fn, ref, inputs, torch.float32, "cpu head convt")


@pytest.mark.parametrize("layout", testing.LAYOUTS)
@pytest.mark.parametrize("case", ONE_GROUP_CONV, ids=c2._case_id)
def test_conv2d_input_grad_grid_float32(case, layout, through_the_path):
    inputs, kw = c2._make(case, torch.float32, layout)
    inputs = [None if t is None else t.detach().cpu().requires_grad_() for t in inputs]
    fn = lambda x, w, b: genkern.ops.conv2d(x, w, b, **kw, activation="relu", backend="cpu")
    ref = lambda x, w, b: reference.conv2d(x, w, b, **kw, activation="relu")
    check_against_reference_unmodified(fn, ref, inputs, torch.float32, "cpu head convt dgrad")


# (N, C_in, H, W, C_out, kernel, stride, padding, output_padding, bias)
GEOMETRY = [
    (2, 32, 14, 14, 1, 4, 2, 1, 0, True),  # the VAE's and autoencoder's last layer
    (2, 64, 8, 9, 3, 4, 2, 1, 0, False),  # DCGAN's, odd width
    (1, 16, 5, 7, 2, 3, 1, 1, 0, True),  # stride 1: pixels overlap more than one apart
    (2, 20, 6, 6, 4, 4, 2, 1, 1, True),  # kW * C_out = 16: a whole zmm per footprint row
    (2, 13, 5, 5, 2, 5, 3, 2, 2, False),  # stride 3, 8-wide footprint rows
    (1, 8, 3, 4, 1, 3, 2, 0, 1, True),  # output_padding past the padding: the tail row
    (1, 5, 1, 1, 4, 4, 1, 0, 0, True),  # one pixel
    (2, 7, 4, 33, 1, 2, 2, 0, 0, True),  # rows longer than two tiles
    (1, 3, 3, 3, 16, 1, 1, 0, 0, True),  # 1x1 kernel onto 16 channels
    (1, 3, 3, 3, 4, 4, 4, 3, 3, True),  # stride 4, padding 3: footprints apart, rows cropped
    (1, 4, 70, 70, 1, 4, 2, 1, 0, True),  # a sample in several bands of rows
]


def _geometry_inputs(case, layout):
    n, cin, h, w, cout, k, s, p, op, bias = case
    x = testing.make_tensor([n, cin, h, w], torch.float32, "cpu", layout, True)
    wt = testing.make_tensor([cin, cout, k, k], torch.float32, "cpu", "contiguous", True)
    b = testing.make_tensor([cout], torch.float32, "cpu", "contiguous", True) if bias else None
    return [x, wt, b], dict(stride=s, padding=p, output_padding=op)


@pytest.mark.parametrize("layout", testing.LAYOUTS)
@pytest.mark.parametrize("case", GEOMETRY, ids=lambda c: "x".join(map(str, c)))
def test_geometry_float32(case, layout, through_the_path):
    inputs, kw = _geometry_inputs(case, layout)
    assert _fits(inputs[0].detach(), inputs[1].detach(), kw)
    fn, ref = ct._fns(kw, None, 0.01, "cpu")
    check_against_reference_unmodified(fn, ref, inputs, torch.float32, "cpu head convt")
    with torch.no_grad():  # the layout at::convolution gives the same call
        assert fn(*inputs).stride() == F.conv_transpose2d(*inputs, **kw).stride()


@pytest.mark.parametrize("case", [GEOMETRY[0], GEOMETRY[1], GEOMETRY[4]], ids=["4", "12", "8"])
def test_special_values_reach_what_stock_reaches(case, through_the_path):
    # NaN and +-inf inputs: the non-finite outputs are stock's exactly (the vector adds past a
    # footprint's width touch its neighbours' floats), the finite ones close
    inputs, kw = _geometry_inputs(case, "channels_last")
    x = inputs[0].detach().clone()
    x[0, 0, 1, 2], x[0, 1, 3, 3], x[-1, 2, 2, 0] = float("nan"), float("inf"), -float("inf")
    fn = ct._fns(kw, None, 0.01, "cpu")[0]
    with torch.no_grad():
        ours = fn(x, *[t.detach() if t is not None else None for t in inputs[1:]])
        stock = F.conv_transpose2d(x, inputs[1].detach(), inputs[2], **kw)
    assert torch.equal(torch.isnan(ours), torch.isnan(stock))
    assert torch.equal(torch.isinf(ours), torch.isinf(stock))
    finite = torch.isfinite(stock)
    torch.testing.assert_close(ours[finite], stock[finite], rtol=1e-4, atol=1e-4)


def test_same_bits_for_any_thread_count(through_the_path):
    inputs, kw = _geometry_inputs((5, 32, 14, 14, 1, 4, 2, 1, 0, True), "channels_last")
    fn = ct._fns(kw, None, 0.01, "cpu")[0]
    threads = torch.get_num_threads()
    with torch.no_grad():
        try:
            torch.set_num_threads(1)
            one = fn(*inputs)
            torch.set_num_threads(2)
            two = fn(*inputs)
        finally:
            torch.set_num_threads(threads)
    assert torch.equal(one, two)


def test_never_is_atens_kernel(through_the_path):
    inputs, kw = _geometry_inputs((2, 32, 6, 6, 1, 4, 2, 1, 0, True), "channels_last")
    before = clones(inputs)
    fn = ct._fns(kw, None, 0.01, "cpu")[0]
    with torch.no_grad():
        ours = fn(*inputs)
        with _head_convt.mode("never"):
            assert not _fits(inputs[0], inputs[1], kw)
            atens = fn(*inputs)
    assert not torch.equal(ours, atens)  # another summation order: not the same path
    torch.testing.assert_close(ours, atens, rtol=1e-5, atol=1e-5)
    assert_unchanged(before, inputs)


def test_calls_it_does_not_take():
    x = torch.zeros(2, 8, 4, 4)
    kw = dict(stride=2, padding=1, output_padding=0)
    assert _fits(x, torch.zeros(8, 4, 4, 4), kw)
    assert not _fits(x, torch.zeros(8, 5, 4, 4), kw)  # a footprint row of 20 floats
    assert not _fits(x, torch.zeros(8, 3, 5, 5), kw)  # 75 footprint columns
    assert not _fits(x.double(), torch.zeros(8, 1, 4, 4).double(), kw)  # float64
    assert not _fits(x, torch.zeros(8, 1, 4, 4), dict(kw, dilation=2))
    assert not _fits(x, torch.zeros(8, 1, 4, 4), dict(kw, groups=2))
    assert not _fits(torch.zeros(0, 8, 4, 4), torch.zeros(8, 1, 4, 4), kw)  # empty batch
    # an empty output: left to ATen, which reports it
    assert not _fits(torch.zeros(1, 8, 1, 1), torch.zeros(8, 1, 2, 2), dict(kw, padding=1))


def test_mode_names():
    check_mode_switch(_head_convt, "head convt", _ext._C.head_convt_mode)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("act,slope", [(None, 0.01), ("leaky_relu", 0.2), ("silu", 0.01)])
def test_opcheck_through_the_path(act, slope, layout, through_the_path):
    # float32, which the kernels take: the transposed conv's forward and the conv's backward
    act_id = A.activation_id(act)
    preact = not A.saves_output(act_id, slope)
    (x, w, b), kw = _geometry_inputs((2, 8, 3, 4, 2, 4, 2, 1, 0, True), layout)
    assert _fits(x.detach(), w.detach(), kw)
    args = (x, w, b, [2, 2], [1, 1], [0, 0], [1, 1], 1, act_id, slope, preact, "cpu")
    torch.library.opcheck(torch.ops.genkern.conv_transpose2d_act.default, args)
    y = F.conv_transpose2d(x.detach(), w.detach(), **kw)  # a conv from 2 channels back onto x
    wc = w.detach().clone().requires_grad_()
    args = (y.requires_grad_(), wc, None, [2, 2], [1, 1], [1, 1], 1, act_id, slope, preact, "cpu")
    torch.library.opcheck(torch.ops.genkern.conv2d_act.default, args)
    out, pre = torch.ops.genkern.conv2d_act(
        *[a.detach() if torch.is_tensor(a) else a for a in args]
    )
    saved = None if act is None else (pre if preact else out)
    bargs = (torch.randn_like(out), saved, y.detach(), wc.detach(), [2, 2], [1, 1], [1, 1], 1)
    bargs += (act_id, slope, [True, True, False], "cpu")
    torch.library.opcheck(torch.ops.genkern.conv2d_act_backward.default, bargs)


@pytest.mark.skipif(not _AVX512, reason="no AVX-512 here: every test ran the AVX2 kernels")
def test_avx2_kernels_on_an_avx512_cpu():
    """The grids, the geometry, special values and the bits for any thread count on the AVX2 kernels
    (GENKERN_CPU_NO_AVX512=1, read once per process: a subprocess)."""
    run_without_avx512(__file__, "grid_float32 or geometry or same_bits or special_values")
