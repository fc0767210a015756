"""The cpu backend's few-channel col2im path (csrc/cpu/col2im_path.h, switched by
genkern/ops/_col2im.py): conv_transpose2d forwards onto few channels and conv2d input gradients
from few channels through ATen's GEMM + col2im kernel. Every shape of the conv test grids is run
through it with mode "always"; the measured rule ("auto") is pinned on the layers it is for."""

import pytest
import test_conv2d as c2
import test_conv_transpose2d as ct
import torch
import torch.nn.functional as F
from _helpers import check_against_reference_unmodified, check_mode_switch
from conftest import DEVICE

import genkern
from genkern import _ext, backends, reference, testing
from genkern.ops import _col2im

pytestmark = pytest.mark.skipif(
    backends.unavailable_reason("cpu", torch.device("cpu"), torch.float64) is not None,
    reason="the C++ extension genkern._C is not built",
)

ONE_GROUP_CONV = [case for case in c2.SHAPES if case[9] == 1]
ONE_GROUP_CONVT = [case for case in ct.SHAPES if case[9] == 1]
ACTS = [(None, 0.01), ("leaky_relu", -0.1), ("sigmoid", 0.01)]


@pytest.fixture
def always():
    with _col2im.mode("always"):
        yield


def _conv_fns(kw, act, slope):
    fn = lambda x, w, b: genkern.ops.conv2d(
        x, w, b, **kw, activation=act, negative_slope=slope, backend="cpu"
    )
    ref = lambda x, w, b: reference.conv2d(x, w, b, **kw, activation=act, negative_slope=slope)
    return fn, ref


def _on_cpu(inputs):
    return [None if t is None else t.detach().cpu().requires_grad_(t.requires_grad) for t in inputs]


@pytest.mark.parametrize("layout", testing.LAYOUTS)
@pytest.mark.parametrize("act,slope", ACTS)
@pytest.mark.parametrize("case", ONE_GROUP_CONV, ids=c2._case_id)
def test_conv2d_input_grad_float64(case, act, slope, layout, always):
    inputs, kw = c2._make(case, torch.float64, layout)
    inputs = _on_cpu(inputs)
    fn, ref = _conv_fns(kw, act, slope)
    check_against_reference_unmodified(fn, ref, inputs, torch.float64, "cpu col2im")


@pytest.mark.parametrize("layout", testing.LAYOUTS)
@pytest.mark.parametrize("act,slope", ACTS)
@pytest.mark.parametrize("case", ONE_GROUP_CONVT, ids=ct._case_id)
def test_conv_transpose2d_float64(case, act, slope, layout, always):
    inputs, kw = ct._make(case, torch.float64, layout, device="cpu")
    fn, ref = ct._fns(kw, act, slope, "cpu")
    check_against_reference_unmodified(fn, ref, inputs, torch.float64, "cpu col2im")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradcheck(layout, always):
    (x, w, b), kw = c2._make((2, 3, 6, 5, 4, 3, 2, 1, 2, 1, True), torch.float64, layout)
    leaves = _on_cpu([x, w, b])
    fn = _conv_fns(kw, "silu", 0.01)[0]
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-5)
    inputs, kw = ct._make(
        (2, 3, 3, 4, 2, 3, 2, 1, 1, 1, 1, True), torch.float64, layout, device="cpu"
    )
    fn = ct._fns(kw, "tanh", 0.01, "cpu")[0]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


# the layers the rule is for (small spatial sizes): a decoder's last layer 32 -> 1, a generator's
# 64 -> 3, and an image encoder's first conv 3 -> 64 (its input gradient is the transposed conv)
AUTO_CONVT = [(2, 32, 5, 4, 1, 4, 2, 1, 0, 1, 1, True), (2, 64, 4, 3, 3, 4, 2, 1, 0, 1, 1, False)]
AUTO_CONV = [(2, 3, 9, 8, 64, 4, 2, 1, 1, 1, False), (2, 1, 7, 7, 32, 3, 1, 1, 1, 1, True)]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", AUTO_CONVT, ids=ct._case_id)
def test_auto_rule_conv_transpose2d_float32(case, layout):
    inputs, kw = ct._make(case, torch.float32, layout, device="cpu")
    x, w, _ = inputs
    with _col2im.mode("auto"):
        assert _ext._C.use_col2im(x, w, 1)
        assert not _ext._C.use_col2im(x.double(), w.double(), 1)  # float64: ATen's own choice
        fn, ref = ct._fns(kw, "tanh", 0.01, "cpu")
        testing.check_against_reference(fn, ref, inputs, torch.float32, "cpu col2im auto")
        y = fn(*inputs)
    with _col2im.mode("never"):  # the same layout as the oneDNN path's (and stock's) output
        assert y.stride() == fn(*inputs).stride()
    assert y.stride() == F.conv_transpose2d(*inputs, **kw).stride()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", AUTO_CONV, ids=c2._case_id)
def test_auto_rule_conv2d_input_grad_float32(case, layout):
    inputs, kw = c2._make(case, torch.float32, layout)
    inputs = _on_cpu(inputs)
    x, w, _ = inputs
    y = F.conv2d(x, w, **kw)
    with _col2im.mode("auto"):
        assert _ext._C.use_col2im(y, w, 1)  # the input gradient: g [N, C_out, ..] onto C_in
        testing.check_against_reference(
            *_conv_fns(kw, "leaky_relu", 0.2), inputs, torch.float32, "cpu col2im auto"
        )
    strides = {}
    for name in ("auto", "never"):  # the input gradient in the oneDNN path's layout
        with _col2im.mode(name):
            out = _conv_fns(kw, "leaky_relu", 0.2)[0](*inputs)
            gx = torch.autograd.grad(out, x, torch.ones_like(out))[0]
            strides[name] = gx.stride()
    assert strides["auto"] == strides["never"]


def test_rule_leaves_other_layers_to_onednn():
    x = torch.zeros(2, 64, 4, 4)
    with _col2im.mode("auto"):
        assert not _ext._C.use_col2im(x, torch.zeros(64, 8, 4, 4), 1)  # 8 output channels
        assert not _ext._C.use_col2im(x[:, :16], torch.zeros(16, 3, 4, 4), 1)  # 16 -> 3
        assert not _ext._C.use_col2im(x, torch.zeros(64, 1, 4, 4), 2)  # groups
        assert not _ext._C.use_col2im(x.bfloat16(), torch.zeros(64, 1, 4, 4).bfloat16(), 1)
    with _col2im.mode("never"):
        assert not _ext._C.use_col2im(x, torch.zeros(64, 1, 4, 4), 1)


def test_mode_names():
    check_mode_switch(_col2im, "col2im", _ext._C.col2im_mode)


@pytest.mark.skipif(DEVICE != "cpu", reason="the ops' opcheck tests build their inputs on DEVICE")
@pytest.mark.parametrize("act,slope", [(None, 0.01), ("leaky_relu", 0.2), ("silu", 0.01)])
def test_opcheck_through_the_path(act, slope, always):
    # the custom ops' own opcheck tests (forward and backward ops), with every one-group call
    # going through col2im: conv2d's input gradient and conv_transpose2d's forward
    c2.test_opcheck("cpu", act, slope)
    ct.test_opcheck("cpu", act, slope)
