"""The Triton backend of genkern.ops.linear against the float64 reference.

Runs on CUDA, or on CPU under the Triton interpreter (TRITON_INTERPRET=1, set by conftest when
there is no GPU); shapes are tiny so the interpreter gets through the module quickly.
"""

import pytest
import torch
from _helpers import check_against_reference_unmodified
from conftest import DEVICE
from test_linear import BROADCAST_FORMS, _case_id, _fns, _make

from genkern import backends, testing

pytestmark = pytest.mark.triton

_REASON = backends.unavailable_reason("triton", torch.device(DEVICE), torch.float32)
if _REASON is not None:
    pytest.skip(f"the Triton backend cannot run here: {_REASON}", allow_module_level=True)

# (input shape, out_features, bias)
SHAPES = [
    ((5, 7), 6, True),  # sizes not a multiple of the tile
    ((9,), 4, False),  # 1-D
    ((2, 3, 5), 3, True),  # 3-D
    ((150, 5), 20, True),  # rows enough for the split weight gradient (interpreter split: 64)
]
ACTIVATIONS = [
    (None, 0.01),
    ("relu", 0.01),
    ("leaky_relu", -0.1),
    ("sigmoid", 0.01),
    ("silu", 0.01),
]


@pytest.fixture(autouse=True)
def _ieee_fp32():
    """fp32 to fp32 tolerances: no TF32 on GPU (the kernels follow cuda.matmul.allow_tf32)."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.parametrize("act,slope", ACTIVATIONS)
@pytest.mark.parametrize("case", SHAPES, ids=_case_id)
def test_forward_and_grads(case, act, slope):
    inputs = _make(case, torch.float32, "contiguous")
    fn, ref = _fns(act, slope, "triton")
    check_against_reference_unmodified(fn, ref, inputs, torch.float32, "triton")


def test_strided_and_transposed_operands():
    x = testing.make_tensor([6, 5], torch.float32, DEVICE, "noncontiguous", True)
    w = testing.make_tensor([5, 4], torch.float32, DEVICE, "contiguous", True)
    fn, ref = _fns("tanh", 0.01, "triton")
    testing.check_against_reference(
        lambda x, w: fn(x, w.t(), None),
        lambda x, w: ref(x, w.t(), None),
        [x, w],
        torch.float32,
        "triton",
    )


NEEDS = [(False, True, False), (True, False, False), (False, False, True)]


@pytest.mark.parametrize("needs", NEEDS)
def test_only_requested_grads(needs):
    for case in (SHAPES[0], SHAPES[3]):
        inputs = _make(case, torch.float32, "contiguous", needs)
        fn, ref = _fns("relu", 0.01, "triton")
        testing.check_against_reference(fn, ref, inputs, torch.float32, "triton")


def test_float16_against_float64_reference():
    inputs = _make(((12, 32), 16, True), torch.float16, "contiguous")
    fn, ref = _fns("silu", 0.01, "triton")
    ref_out, grad_out, ref_grads = testing.forward_and_grads(
        ref, [testing.as_reference(t) for t in inputs]
    )
    out, _, grads = testing.forward_and_grads(fn, inputs, grad_out)
    assert out.dtype == torch.float16
    testing.assert_close_to_reference(out, ref_out, torch.float16, "forward")
    for i, (g, rg) in enumerate(zip(grads, ref_grads)):
        testing.assert_close_to_reference(g, rg, torch.float16, f"grad #{i}")


def test_zero_size():
    for shape, n in [((0, 5), 3), ((4, 5), 0), ((4, 0), 3)]:
        x = torch.randn(shape, device=DEVICE, requires_grad=True)
        w = torch.randn(n, shape[-1], device=DEVICE, requires_grad=True)
        b = torch.randn(n, device=DEVICE, requires_grad=True)
        fn, ref = _fns("relu", 0.01, "triton")
        testing.check_against_reference(fn, ref, [x, w, b], torch.float32, f"triton {shape}")


@pytest.mark.parametrize("form", BROADCAST_FORMS, ids=str)
def test_linear_forms_of_stock(form):
    """A 1-D weight and a bias broadcast to the output: Triton's product, stock's add."""
    xs, ws, bs = form
    inputs = [testing.make_tensor(s, torch.float32, DEVICE, "contiguous", True) for s in (xs, ws)]
    if bs is not None:
        inputs.append(testing.make_tensor(bs, torch.float32, DEVICE, "contiguous", True))
    fn, ref = _fns("leaky_relu", 0.2, "triton")
    check_against_reference_unmodified(
        lambda *t: fn(*t, *([None] * (3 - len(t)))),
        lambda *t: ref(*t, *([None] * (3 - len(t)))),
        inputs,
        torch.float32,
        "triton",
    )
