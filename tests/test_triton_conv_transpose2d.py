"""The Triton backend of genkern.ops.conv_transpose2d against the float64 reference.

Runs on CUDA, or on CPU under the Triton interpreter (TRITON_INTERPRET=1, set by conftest when
there is no GPU); shapes are tiny so the interpreter gets through the module quickly.
"""

import math

import pytest
import torch
from _helpers import check_against_reference_unmodified
from conftest import DEVICE
from test_conv_transpose2d import _case_id, _fns, _make

from genkern import backends, testing

pytestmark = pytest.mark.triton

_REASON = backends.unavailable_reason("triton", torch.device(DEVICE), torch.float32)
if _REASON is not None:
    pytest.skip(f"the Triton backend cannot run here: {_REASON}", allow_module_level=True)

from genkern.triton.conv_transpose2d import _phase_taps  # noqa: E402

# (N, C_in, H, W, C_out, kernel, stride, padding, output_padding, groups, dilation, bias)
SHAPES = [
    (1, 3, 3, 2, 4, 4, 2, 1, 0, 1, 1, True),  # DCGAN 4x4 s2 p1: 2x2 taps per phase
    (2, 4, 2, 3, 2, 3, 3, 0, 2, 2, 1, True),  # stride 3 (a phase with 1 tap), groups, out pad 2
    (1, 2, 3, 3, 3, 3, 2, 2, 1, 1, 2, False),  # dilation 2 with stride 2: taps skip by 1
    (1, 2, 2, 2, 2, 3, 2, 2, 0, 2, 3, True),  # dilation 3, stride 2: step 2, some phases empty
    (2, 3, 3, 3, 2, 1, 1, 0, 0, 1, 1, True),  # 1x1
    (1, 2, 3, 2, 2, (3, 2), (1, 3), (2, 0), (0, 1), 1, (2, 1), True),  # rectangular everything
]
ACTIVATIONS = [(None, 0.01), ("leaky_relu", -0.1), ("tanh", 0.01), ("silu", 0.01)]


@pytest.fixture(autouse=True)
def _ieee_fp32():
    """fp32 to fp32 tolerances: no TF32 on GPU (the kernels follow cudnn.allow_tf32)."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = before


def test_phase_taps_cover_every_tap_once():
    """Every (output row, tap) pair whose input row is integral is in exactly one phase."""
    params = [(2, 1, 1, 4), (3, 0, 1, 3), (2, 2, 2, 3), (2, 2, 3, 3), (4, 1, 2, 5), (1, 0, 1, 1)]
    for stride, padding, dilation, kernel in params:
        table = _phase_taps(stride, padding, dilation, kernel)
        step = stride // math.gcd(stride, dilation)
        for oh in range(3 * stride):
            r, q = oh % stride, oh // stride
            k0, count, base = table[3 * r : 3 * r + 3]
            ours = {(k0 + j * step, q + base - j * step * dilation // stride) for j in range(count)}
            want = {
                (k, (oh + padding - k * dilation) // stride)
                for k in range(kernel)
                if (oh + padding - k * dilation) % stride == 0
            }
            assert ours == want, (stride, padding, dilation, kernel, oh)


@pytest.mark.parametrize("act,slope", ACTIVATIONS)
@pytest.mark.parametrize("case", SHAPES, ids=_case_id)
def test_forward_and_grads(case, act, slope):
    inputs, kw = _make(case, torch.float32, "contiguous")
    fn, ref = _fns(kw, act, slope, "triton")
    check_against_reference_unmodified(fn, ref, inputs, torch.float32, "triton")


@pytest.mark.parametrize("layout", ["channels_last", "noncontiguous"])
def test_layouts(layout):
    inputs, kw = _make(SHAPES[0], torch.float32, layout)
    fn, ref = _fns(kw, "sigmoid", 0.01, "triton")
    testing.check_against_reference(fn, ref, inputs, torch.float32, f"triton {layout}")


NEEDS = [(False, True, False), (True, False, False), (False, False, True)]


@pytest.mark.parametrize("needs", NEEDS)
def test_only_requested_grads(needs):
    inputs, kw = _make(SHAPES[1], torch.float32, "contiguous", needs)
    fn, ref = _fns(kw, "relu", 0.01, "triton")
    testing.check_against_reference(fn, ref, inputs, torch.float32, "triton")


def test_float16_against_float64_reference():
    inputs, kw = _make((1, 8, 3, 3, 8, 4, 2, 1, 0, 1, 1, True), torch.float16, "contiguous")
    ref_fn = _fns(kw, "silu", 0.01, None)[1]
    ref_out, grad_out, ref_grads = testing.forward_and_grads(
        ref_fn, [testing.as_reference(t) for t in inputs]
    )
    out, _, grads = testing.forward_and_grads(_fns(kw, "silu", 0.01, "triton")[0], inputs, grad_out)
    assert out.dtype == torch.float16
    testing.assert_close_to_reference(out, ref_out, torch.float16, "forward")
    for i, (g, rg) in enumerate(zip(grads, ref_grads)):
        testing.assert_close_to_reference(g, rg, torch.float16, f"grad #{i}")
