"""The cpu backend's layout choice for oneDNN (csrc/cpu/onednn_layout.h, switched by
genkern/ops/_onednn_layout.py): an NCHW float32 conv or transposed conv may run on channels_last
copies of its inputs, its results copied back (csrc/cpu/layout_copy.h). Mode "always" runs the
conv2d and conv_transpose2d grids that way against the float64 reference; the copies are checked
bit for bit over awkward sizes; "auto" times each geometry once and keeps its choice."""

import pytest
import test_col2im_path as col2im_tests
import test_conv2d as c2
import test_conv_transpose2d as ct
import torch
import torch.nn.functional as F
from _helpers import check_against_reference_unmodified

from genkern import _ext, backends
from genkern.ops import _onednn_layout, _stem_conv

pytestmark = pytest.mark.skipif(
    backends.unavailable_reason("cpu", torch.device("cpu"), torch.float32) is not None,
    reason="the C++ extension is not built",
)

ACTS = [(None, 0.01), ("relu", 0.01), ("leaky_relu", -0.1), ("tanh", 0.01)]


@pytest.fixture
def always():
    # the stem kernels take the few-channel convs of the grids in any layout: off, so that
    # every conv reaches oneDNN
    with _onednn_layout.mode("always"), _stem_conv.mode("never"):
        yield


def _cpu(inputs):
    return [None if t is None else t.detach().cpu().requires_grad_(t.requires_grad) for t in inputs]


# transposed convs left to ATen's layout: some output position gets no tap (stride over the
# dilated kernel, output_padding past it: oneDNN crashes on such calls, conv_geometry.h), and the
# 1x1 inputs, which are one GEMM on the cpu backend
CONVT_ON_ATEN = {2, 4, 6, 7, 8}


def _check_runs_channels_last(fn, ref, inputs, what, expected=True):
    calls = _onednn_layout.channels_last_calls()
    check_against_reference_unmodified(fn, ref, inputs, torch.float32, what)
    ran = _onednn_layout.channels_last_calls() - calls
    assert ran >= 2 if expected else ran == 0  # the forward and the backward


@pytest.mark.parametrize("act,slope", ACTS)
@pytest.mark.parametrize("case", c2.SHAPES, ids=c2._case_id)
def test_conv2d_against_float64_reference(case, act, slope, always):
    inputs, kw = c2._make(case, torch.float32, "contiguous")
    fn, ref = col2im_tests._conv_fns(kw, act, slope)
    _check_runs_channels_last(fn, ref, _cpu(inputs), "cpu conv2d in channels_last")


@pytest.mark.parametrize("act,slope", ACTS)
@pytest.mark.parametrize("index", range(len(ct.SHAPES)), ids=[ct._case_id(c) for c in ct.SHAPES])
def test_conv_transpose2d_against_float64_reference(index, act, slope, always):
    inputs, kw = ct._make(ct.SHAPES[index], torch.float32, "contiguous", device="cpu")
    fn, ref = ct._fns(kw, act, slope, "cpu")
    what = "cpu conv_transpose2d in channels_last"
    _check_runs_channels_last(fn, ref, _cpu(inputs), what, index not in CONVT_ON_ATEN)


def _grads_and_layouts(fn, inputs, mode):
    with _onednn_layout.mode(mode), _stem_conv.mode("never"):  # see always()
        y = fn(*inputs)
        grads = torch.autograd.grad(y, [t for t in inputs if t is not None], torch.ones_like(y))
    return [y, *grads]


def _layer(transposed, case, dtype=torch.float32, layout="contiguous", act="relu", slope=0.01):
    """genkern's call, its float64 reference, and its inputs on the cpu."""
    if transposed:
        inputs, kw = ct._make(case, dtype, layout, device="cpu")
        return (*ct._fns(kw, act, slope, "cpu"), _cpu(inputs))
    inputs, kw = c2._make(case, dtype, layout)
    return (*col2im_tests._conv_fns(kw, act, slope), _cpu(inputs))


# onto one channel, an NCHW tensor is channels_last too: the strides must still be ATen's
ONE_CHANNEL = (2, 4, 8, 8, 1, 3, 1, 1, 1, 1, True)


@pytest.mark.parametrize(
    "transposed,case",
    [(False, c2.SHAPES[0]), (True, ct.SHAPES[1]), (False, ONE_CHANNEL)],
    ids=["conv2d", "conv_transpose2d", "conv2d-onto-one-channel"],
)
def test_results_come_back_in_atens_layouts(transposed, case):
    fn, _, inputs = _layer(transposed, case)
    calls = _onednn_layout.channels_last_calls()
    always = _grads_and_layouts(fn, inputs, "always")
    assert _onednn_layout.channels_last_calls() >= calls + 2  # the forward and the backward
    never = _grads_and_layouts(fn, inputs, "never")
    for a, b in zip(always, never):
        assert a.stride() == b.stride() == torch.empty(a.shape).stride()
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_channels_last_and_float64_calls_are_left_alone(always):
    for layout, dtype in [("channels_last", torch.float32), ("contiguous", torch.float64)]:
        fn, _, inputs = _layer(False, c2.SHAPES[0], dtype, layout)
        calls = _onednn_layout.channels_last_calls()
        _grads_and_layouts(fn, inputs, "always")
        assert _onednn_layout.channels_last_calls() == calls


def test_auto_times_each_geometry_once():
    # big enough for the auto rule: 2 x 32 x 16 x 16 inputs meet 32 x 16 weights (8.4M MACs)
    x = torch.randn(2, 32, 16, 16, requires_grad=True)
    w = (torch.randn(32, 32, 4, 4) * 0.05).requires_grad_()
    with _onednn_layout.mode("auto"):  # setting the mode forgets the kept choices
        assert _onednn_layout.choices() == 0
        for _ in range(3):
            y = torch.ops.genkern.conv2d_act(
                x, w, None, [2, 2], [1, 1], [1, 1], 1, 1, 0.01, False, "cpu"
            )[0]
            torch.autograd.grad(y, [x, w], torch.ones_like(y))
        assert _onednn_layout.choices() == 2  # the forward's and the backward's
        small = torch.randn(1, 2, 5, 5)
        torch.ops.genkern.conv2d_act(
            small, torch.randn(2, 2, 3, 3), None, [1, 1], [0, 0], [1, 1], 1, 0, 0.01, False, "cpu"
        )
        assert _onednn_layout.choices() == 2  # too small to time


def test_a_layer_past_eight_timed_shapes_takes_its_majority_untimed():
    # found by a fuzz: an inference server whose batch and image sizes keep changing timed every
    # new shape (6 calls each) and ran ~3x slower than stock
    w = torch.randn(32, 32, 4, 4) * 0.05
    with _onednn_layout.mode("auto"), torch.no_grad():
        for i, side in enumerate(range(16, 40, 2)):  # 12 shapes of one layer, each >= 8.4M MACs
            x = torch.randn(2, 32, side, side)
            y = torch.ops.genkern.conv2d_act(
                x, w, None, [2, 2], [1, 1], [1, 1], 1, 1, 0.01, False, "cpu"
            )[0]
            torch.testing.assert_close(y, torch.relu(F.conv2d(x, w, None, 2, 1)))
            assert _onednn_layout.timings() == min(i + 1, 8)
        assert _onednn_layout.choices() == 12  # the untimed ones kept too


@pytest.mark.parametrize(
    "shape",
    # 16 x 16 tiles (AVX-512), 8 x 8 ones in the strips they leave (37: 32 + 5, 99: 96 + 3,
    # 24: 16 + 8), scalar edges
    [(2, 13, 7, 9), (3, 64, 32, 32), (1, 8, 8, 8), (2, 1, 5, 5), (2, 70, 1, 1), (4, 3, 9, 1)]
    + [(2, 37, 9, 11), (1, 24, 20, 20), (2, 99, 5, 7)]
    # 4 MB and more: non-temporal stores where the destination's rows are whole aligned lines
    # (a 13,455-pixel plane and 40 channels: plain stores both ways)
    + [(4, 64, 64, 64), (2, 40, 115, 117)],
)
def test_copies_are_exact(shape):
    C = _ext._C
    x = torch.randn(shape)
    cl = x.contiguous(memory_format=torch.channels_last)
    for out in (C.to_channels_last(x), C.to_channels_last_scratch(x, 0)):
        assert out.is_contiguous(memory_format=torch.channels_last) and torch.equal(out, x)
        assert out.stride() == cl.stride()
    back = C.to_contiguous(cl)
    assert back.is_contiguous() and torch.equal(back, x)
    assert C.to_contiguous(x) is x or torch.equal(C.to_contiguous(x), x)
    x64 = x.double()  # other dtypes: ATen's copy
    assert torch.equal(C.to_channels_last(x64), x64)


def test_scratch_copy_never_overwrites_a_live_one():
    C = _ext._C
    a, b = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8)
    first = C.to_channels_last_scratch(a, 1)
    second = C.to_channels_last_scratch(b, 1)  # `first` still alive: fresh memory
    assert torch.equal(first, a) and torch.equal(second, b)
    assert first.data_ptr() != second.data_ptr()
    with pytest.raises(RuntimeError, match="slot must be 0 or 1"):
        C.to_channels_last_scratch(a, 2)


def test_bad_mode_names_raise():
    with pytest.raises(ValueError, match="oneDNN layout mode must be one of"):
        _onednn_layout.set_mode("fastest")
    with pytest.raises(RuntimeError, match="oneDNN layout mode must be 0"):
        _ext._C.set_onednn_layout_mode(3)


@pytest.mark.parametrize("transposed", [False, True], ids=["conv2d", "conv_transpose2d"])
def test_opcheck_in_channels_last(transposed, always):
    # leaky_relu with a negative slope keeps the pre-activation; the backward with every mask
    (x, w, b), geometry = (
        _layer(transposed, ct.SHAPES[0] if transposed else c2.SHAPES[1])[2],
        (([2, 2], [1, 1], [1, 1], [1, 1], 1) if transposed else ([2, 2], [1, 1], [1, 1], 1)),
    )
    name = "conv_transpose2d_act" if transposed else "conv2d_act"
    op, backward = getattr(torch.ops.genkern, name), getattr(torch.ops.genkern, name + "_backward")
    args = (x, w, b, *geometry, 2, -0.1, True, "cpu")
    torch.library.opcheck(op.default, args)
    y, preact = op(*[a.detach() if torch.is_tensor(a) else a for a in args])
    for mask in ([True, True, True], [True, False, False], [False, True, True]):
        bargs = (torch.randn_like(y), preact, x.detach(), w.detach(), *geometry, 2, -0.1, mask)
        torch.library.opcheck(backward.default, (*bargs, "cpu"))


@pytest.mark.parametrize("transposed", [False, True])
def test_nchw_input_of_a_channels_last_weight(transposed):
    # ATen runs such a call in channels_last and converts the input itself; genkern converts it
    # first with its own copy: the same bits and layouts as ATen's call, forward and backward
    import torch.nn.functional as F

    import genkern

    torch.manual_seed(0)
    x = torch.randn(3, 8, 7, 6, requires_grad=True)
    shape = (8, 5, 4, 4) if transposed else (5, 8, 4, 4)
    w = torch.randn(shape).contiguous(memory_format=torch.channels_last).requires_grad_()
    ours = genkern.ops.conv_transpose2d if transposed else genkern.ops.conv2d
    stock = F.conv_transpose2d if transposed else F.conv2d
    outs = []
    for fn in (lambda *a: ours(*a, backend="cpu"), stock):
        y = fn(x, w, None, 2, 1)
        g = torch.linspace(-1, 1, y.numel()).reshape(y.shape)
        outs.append([y, *torch.autograd.grad(y, (x, w), g)])
    for a, b in zip(*outs):
        assert a.stride() == b.stride()
        assert torch.equal(a, b)
