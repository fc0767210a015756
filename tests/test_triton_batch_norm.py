"""The Triton batch_norm + activation kernels (under TRITON_INTERPRET=1 without a GPU), tiny
shapes, against the float64 reference."""

import pytest
import torch
from conftest import DEVICE, device_backends

import genkern
from genkern import activations as A
from genkern import reference, testing

pytestmark = pytest.mark.skipif(
    "triton" not in device_backends(torch.float32),
    reason="the Triton backend is not available here",
)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "noncontiguous"])
@pytest.mark.parametrize(
    "act,slope",
    [(None, 0.01), ("relu", 0.01), ("leaky_relu", -0.1), ("silu", 0.01), ("tanh", 0.01)],
)
@pytest.mark.parametrize("training", [True, False])
def test_forward_grads_running_stats(training, act, slope, layout):
    x = testing.make_tensor([3, 4, 5, 3], torch.float32, DEVICE, layout, True)
    w = testing.make_tensor([4], torch.float32, DEVICE, requires_grad=True, low=0.5, high=1.5)
    b = testing.make_tensor([4], torch.float32, DEVICE, requires_grad=True)
    rm = testing.make_tensor([4], torch.float32, DEVICE)
    rv = testing.make_tensor([4], torch.float32, DEVICE, low=0.5, high=1.5)
    rmr, rvr = rm.double(), rv.double()
    fn = lambda x, w, b: genkern.ops.batch_norm(  # noqa: E731
        x, rm, rv, w, b, training, 0.2, 1e-5, act, slope, backend="triton"
    )
    ref = lambda x, w, b: reference.batch_norm(  # noqa: E731
        x, rmr, rvr, w, b, training, 0.2, 1e-5, act, slope
    )
    testing.check_against_reference(fn, ref, [x, w, b], torch.float32, "triton")
    testing.assert_close_to_reference(rm, rmr, torch.float32, "running_mean")
    testing.assert_close_to_reference(rv, rvr, torch.float32, "running_var")


def test_large_mean_and_2d_input():
    x = torch.randn(37, 5, device=DEVICE) * 0.1 + 1e3
    y = genkern.ops.batch_norm(x, None, None, training=True, backend="triton")
    assert testing.max_error(y, reference.batch_norm(x.double(), None, None, training=True)) < 2e-2


def test_a_variance_past_float32s_range_gives_stocks_outputs_not_nan():
    # found by fuzz round 22: one element of 1e30 in a float32 channel made the statistics'
    # first merge inf * 0: NaN for the whole channel's outputs and gradients (stock: the bias)
    x = torch.randn(2, 2, 4, 4, device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(0))
    x[0, 0, 1, 2] = 1e30
    w, b = torch.tensor([0.5, 2.0], device=DEVICE), torch.tensor([-1.0, 0.5], device=DEVICE)
    xg = x.clone().requires_grad_()
    y = genkern.ops.batch_norm(xg, None, None, w, b, True, backend="triton")
    y.backward(torch.linspace(-1, 1, y.numel(), device=DEVICE).view_as(y))
    want = torch.nn.functional.batch_norm(x, None, None, w, b, True)
    assert not y.isnan().any() and not xg.grad.isnan().any()
    torch.testing.assert_close(y, want)


def test_opcheck():
    act = A.RELU
    x = torch.randn(2, 3, 4, 4, device=DEVICE, requires_grad=True)
    w = torch.rand(3, device=DEVICE, requires_grad=True)
    args = (
        x,
        w,
        None,
        torch.zeros(3, device=DEVICE),
        torch.ones(3, device=DEVICE),
        True,
        1e-5,
        act,
        0.01,
        False,
        "triton",
    )
    torch.library.opcheck(torch.ops.genkern.batch_norm_act.default, args)
