"""The dense layers' products on oneDNN's matmul (csrc/cpu/onednn_matmul.h, switched by
genkern/ops/_onednn_matmul.py), taken in auto where ATen's GEMM (MKL) runs narrower vectors than
oneDNN: linear's forward and both backward products, and a transposed conv of a 1x1 input (a
DCGAN generator's first layer, one GEMM), run through it on any CPU with mode "always" (float32
against the float64 reference, every gradient, strided operands, inputs unchanged, opcheck), the
path checked to be the one taken, and the rule."""

import pytest
import test_conv_transpose2d as ct
import test_linear as tl
import torch
from _helpers import check_against_reference_unmodified, check_mode_switch
from conftest import grid_backends

from genkern import _ext
from genkern import activations as A
from genkern.ops import _dot_gemm, _onednn_matmul

pytestmark = pytest.mark.skipif(
    "cpu" not in grid_backends(torch.float32), reason="the C++ extension genkern._C is not built"
)

# every product past genkern's small GEMM (over 2M multiply-adds) and the dot-product GEMM
CASES = [((64, 300), 200, True), ((3, 50, 300), 200, False), ((130, 257), 129, True)]


@pytest.fixture
def always():
    with _onednn_matmul.mode("always"), _dot_gemm.mode("never"):
        yield


@pytest.mark.parametrize("layout", tl.LAYOUTS)
@pytest.mark.parametrize("act,slope", tl.ACTIVATIONS)
@pytest.mark.parametrize("case", CASES, ids=tl._case_id)
def test_float32_against_float64_reference(case, act, slope, layout, always):
    inputs = tl._make(case, torch.float32, layout, device="cpu")
    if act in ("relu", "leaky_relu"):
        _exact_products(inputs)
    fn, ref = tl._fns(act, slope, "cpu")
    check_against_reference_unmodified(fn, ref, inputs, torch.float32, "cpu oneDNN matmul")


def _exact_products(inputs):
    """Small integers in x and W and a bias of 0.5, in place, in the tensors' own layouts (linear's
    inputs and the transposed conv's alike): every pre-activation is exact in float32 and in
    float64, so no output sits across relu's kink from the reference's by rounding, which would
    flip its mask and move a whole row of grad_x."""
    x, w, b = inputs
    with torch.no_grad():
        for t in (x, w):
            t.copy_(t.mul(1.5).round().clamp(-3, 3))
        if b is not None:
            b.fill_(0.5)


def test_tied_weight_view(always):
    """A weight that is a transposed view (tied weights): oneDNN takes its strides."""
    x = torch.randn(70, 300, requires_grad=True)
    base = torch.randn(300, 150, requires_grad=True)
    fn, ref = tl._fns("silu", 0.01, "cpu")
    check_against_reference_unmodified(
        lambda x, w: fn(x, w.t(), None),
        lambda x, w: ref(x, w.t(), None),
        [x, base],
        torch.float32,
        "cpu oneDNN matmul, W^T view",
    )


def _onednn_calls(fn) -> int:
    with torch.profiler.profile() as prof:
        fn()
    return sum(e.name == "mkldnn::_linear_pointwise" for e in prof.events())


@pytest.mark.parametrize("needs", [(True, True, True), (False, True, False), (True, False, False)])
def test_each_product_is_taken(needs):
    """Forward, grad_x and grad_w each run on oneDNN's matmul under always, none under never."""
    x, w, b = tl._make(CASES[0], torch.float32, "contiguous", needs, device="cpu")
    fn = tl._fns("relu", 0.01, "cpu")[0]

    def step():
        y = fn(x, w, b)
        wanted = [t for t in (x, w, b) if t.requires_grad]
        torch.autograd.grad(y, wanted, torch.ones_like(y))

    with _dot_gemm.mode("never"):
        with _onednn_matmul.mode("always"):
            assert _onednn_calls(step) == 1 + needs[0] + needs[1]
        with _onednn_matmul.mode("never"):
            assert _onednn_calls(step) == 0


# a DCGAN-64 generator's first layer at a small batch: z (1x1) -> 4x4, as one GEMM
# (n, c, h, w, oc, k, stride, padding, output_padding, groups, dilation, bias)
HEAD_CASES = [
    (8, 100, 1, 1, 64, 4, 1, 0, 0, 1, 1, True),
    (5, 40, 1, 1, 72, 4, 1, 0, 0, 1, 1, False),
]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", HEAD_CASES, ids=ct._case_id)
def test_conv_transpose2d_of_a_1x1_input(case, layout, always):
    inputs, kw = ct._make(case, torch.float32, layout, device="cpu")
    _exact_products(inputs)
    fn, ref = ct._fns(kw, "relu", 0.01, "cpu")
    check_against_reference_unmodified(fn, ref, inputs, torch.float32, "cpu oneDNN matmul, head")

    def step():
        y = fn(*inputs)
        wanted = [t for t in inputs if t is not None]
        torch.autograd.grad(y, wanted, torch.ones_like(y))

    assert _onednn_calls(step) == 3  # the forward and both gradients' products


def test_rule():
    a, b = torch.zeros(128, 784), torch.zeros(784, 400)
    with _onednn_matmul.mode("auto"):
        assert _ext._C.use_onednn_matmul(a, b) == (not _ext._C.blas_as_wide_as_onednn())
    with _onednn_matmul.mode("always"):
        assert _ext._C.use_onednn_matmul(a, b) and _ext._C.use_onednn_matmul(b.t(), a.t())
        assert not _ext._C.use_onednn_matmul(a.double(), b.double())  # float32 only
        assert not _ext._C.use_onednn_matmul(a.bfloat16(), b.bfloat16())
        assert not _ext._C.use_onednn_matmul(a[:0], b)  # empty
        assert not _ext._C.use_onednn_matmul(a[0], b)  # 1-D
    with _onednn_matmul.mode("never"):
        assert not _ext._C.use_onednn_matmul(a, b)


@pytest.mark.parametrize("act,slope", [("leaky_relu", 0.2), (None, 0.01)])
def test_opcheck_through_onednn(act, slope, always):
    x, w, b = tl._make(CASES[0], torch.float32, "contiguous", device="cpu")
    act_id = A.activation_id(act)
    args = (x, w, b, act_id, slope, not A.saves_output(act_id, slope), "cpu")
    torch.library.opcheck(torch.ops.genkern.linear_act.default, args)


def test_mode_names():
    check_mode_switch(_onednn_matmul, "oneDNN matmul", _ext._C.onednn_matmul_mode)
