"""The Triton pooling / upsampling kernels (under TRITON_INTERPRET=1 without a GPU), tiny shapes,
against stock PyTorch."""

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE, device_backends

import genkern
from genkern import reference, testing

pytestmark = pytest.mark.skipif(
    "triton" not in device_backends(torch.float32),
    reason="the Triton backend is not available here",
)


def _check(fn, ref, x):
    y, ry = fn(x), ref(x)
    torch.testing.assert_close(y, ry, equal_nan=True)
    assert y.stride() == ry.stride()
    g = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(ry, x, g)[0])


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize(
    "kw",
    [
        dict(kernel_size=2),
        dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
        dict(kernel_size=(3, 2), stride=(1, 2), padding=(1, 1), dilation=(2, 1)),
    ],
    ids=["2x2", "ceil", "dilated"],
)
def test_max_pool2d(kw, layout):
    x = testing.make_tensor([2, 3, 7, 6], torch.float32, DEVICE, layout, True)
    _check(
        lambda x: genkern.ops.max_pool2d(x, **kw, backend="triton"),
        lambda x: F.max_pool2d(x, **kw),
        x,
    )
    y, idx = genkern.ops.max_pool2d(x, **kw, return_indices=True, backend="triton")
    assert torch.equal(idx, F.max_pool2d(x, **kw, return_indices=True)[1])


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize(
    "act", [("relu", 0.01), ("leaky_relu", -0.3), ("sigmoid", 0.01), ("silu", 0.01)], ids=str
)
def test_max_pool2d_activation(act, layout):
    """act(max pool) fused in the kernels: output saved (relu, sigmoid) or the pooled preact
    (silu, leaky_relu with a negative slope), against the float64 reference."""
    name, slope = act
    x = testing.make_tensor([2, 3, 7, 6], torch.float32, DEVICE, layout, True)
    kw = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)
    testing.check_against_reference(
        lambda x: genkern.ops.max_pool2d(
            x, **kw, activation=name, negative_slope=slope, backend="triton"
        ),
        lambda x: reference.activation(F.max_pool2d(x, **kw), name, slope),
        [x],
        torch.float32,
        "triton",
    )


def test_max_pool2d_ties_and_nan():
    x = torch.zeros(1, 2, 4, 4, device=DEVICE)
    x[0, 0, 1, 1] = x[0, 0, 1, 0] = float("nan")
    x.requires_grad_()
    y, idx = genkern.ops.max_pool2d(x, 2, return_indices=True, backend="triton")
    ry, ridx = F.max_pool2d(x, 2, return_indices=True)
    assert torch.equal(idx, ridx)
    torch.testing.assert_close(y, ry, equal_nan=True)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize(
    "kw",
    [
        dict(kernel_size=2),
        dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
        dict(kernel_size=3, stride=2, padding=1, divisor_override=5),
        dict(kernel_size=2, divisor_override=-3),
    ],
    ids=["2x2", "no_pad_count", "divisor", "negative_divisor"],
)
def test_avg_pool2d(kw, layout):
    x = testing.make_tensor([2, 3, 7, 6], torch.float32, DEVICE, layout, True)
    _check(
        lambda x: genkern.ops.avg_pool2d(x, **kw, backend="triton"),
        lambda x: F.avg_pool2d(x, **kw),
        x,
    )


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("sf,size", [(2, None), (1.7, None), (None, (5, 11))], ids=str)
def test_upsample_nearest2d(sf, size, layout):
    x = testing.make_tensor([2, 3, 4, 5], torch.float32, DEVICE, layout, True)
    _check(
        lambda x: genkern.ops.upsample_nearest2d(x, sf, size, backend="triton"),
        lambda x: F.interpolate(x, size, sf, mode="nearest"),
        x,
    )
