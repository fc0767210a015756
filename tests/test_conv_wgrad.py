"""The cpu backend's conv weight-gradient kernels (csrc/cpu/conv_wgrad.h, switched by
genkern/ops/_conv_wgrad.py): AVX2 tiles (6 x 16) over channels_last tensors with input channels
a multiple of 16, AVX-512 tiles (12 x 32) where the CPU has AVX-512 and the input channels are a
multiple of 32 (the same bits), for conv2d's weight gradient and (roles swapped)
conv_transpose2d's. They take float32 only:
every case runs in float32 against the float64 reference (float64 never reaches them: ATen's
kernels, covered by the float64 grids and gradcheck of test_conv2d.py / test_conv_transpose2d.py).
The kernel itself is checked over geometries that stress its pixel blocks and tiles (ragged
output-channel tiles, taps that land on no pixel, rows wider than a block, a batch slice), then
through the ops in mode "always"; the "auto" rule is pinned on the layers it is for."""

import pytest
import test_col2im_path as col2im_tests
import test_conv2d as c2
import test_conv_transpose2d as ct
import torch
from _helpers import (
    assert_same_bits_without_avx512,
    check_against_reference_unmodified,
    check_mode_switch,
)

from genkern import _ext, backends, testing
from genkern.ops import _conv_wgrad

pytestmark = pytest.mark.skipif(
    backends.unavailable_reason("cpu", torch.device("cpu"), torch.float32) is not None
    or not (_ext.HAS_CPU and _ext._C.avx2_kernels_enabled()),
    reason="the C++ extension is not built, or this CPU has no AVX2 (the kernels need it)",
)

CL = torch.channels_last
_conv_fns = col2im_tests._conv_fns  # the cpu backend's conv2d and its float64 reference


@pytest.fixture
def always():
    with _conv_wgrad.mode("always"):
        yield


def _reference_weight_grad(x, g, kernel, stride, padding, dilation):
    w = torch.empty(g.shape[1], x.shape[1], *kernel, dtype=torch.float64)
    return torch.ops.aten.convolution_backward(
        g.double(),
        x.double(),
        w,
        None,
        stride,
        padding,
        dilation,
        False,
        [0, 0],
        1,
        [False, True, False],
    )[1]


# (n, c_in, h, w, c_out, kernel, stride, padding, dilation)
KERNEL_CASES = [
    (2, 16, 9, 7, 6, (3, 3), (1, 1), (1, 1), (1, 1)),  # odd sizes, one full 6-channel tile
    (3, 32, 8, 8, 13, (4, 4), (2, 2), (1, 1), (1, 1)),  # ragged tiles: 6 + 6 + 1 channels
    (1, 16, 5, 6, 4, (3, 2), (2, 1), (0, 2), (2, 1)),  # non-square everything, batch 1
    (2, 16, 4, 5, 5, (2, 2), (1, 1), (3, 3), (1, 1)),  # padding past the kernel: empty taps
    (4, 16, 40, 33, 7, (3, 3), (1, 1), (1, 1), (1, 1)),  # blocks of 3 rows, a ragged last one
    (1, 16, 2, 300, 5, (1, 3), (1, 1), (0, 1), (1, 1)),  # a row wider than a block
    (2, 48, 6, 6, 20, (1, 1), (1, 1), (0, 0), (1, 1)),  # 1x1 kernel, 3 column blocks
    (2, 16, 10, 11, 4, (2, 2), (3, 3), (0, 0), (1, 1)),  # stride > kernel: skipped pixels
    # multiples of 32 channels: the AVX-512 tile where there is one, 12 x 32
    (3, 64, 8, 8, 25, (4, 4), (2, 2), (1, 1), (1, 1)),  # 12 + 12 + 1 channels, 2 column blocks
    (2, 96, 6, 5, 11, (1, 1), (1, 1), (0, 0), (1, 1)),  # one 11-channel tile, 3 column blocks
    (2, 32, 9, 7, 12, (3, 3), (1, 1), (1, 1), (1, 1)),  # one full tile, odd sizes
]


@pytest.mark.parametrize("case", KERNEL_CASES, ids=c2._case_id)
def test_kernel_against_float64_reference(case):
    n, c, h, w, k, kernel, stride, padding, dilation = case
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w, generator=gen).contiguous(memory_format=CL)
    oh, ow = (
        (size + 2 * p - d * (kk - 1) - 1) // s + 1
        for size, kk, s, p, d in zip((h, w), kernel, stride, padding, dilation)
    )
    g = torch.randn(n, k, oh, ow, generator=gen).contiguous(memory_format=CL)
    before = [x.clone(), g.clone()]
    dw = _ext._C.conv2d_weight_grad_avx2(x, g, *kernel, stride, padding, dilation)
    assert dw.is_contiguous(memory_format=CL)
    ref = _reference_weight_grad(x, g, kernel, stride, padding, dilation)
    testing.assert_close_to_reference(dw, ref, torch.float32, "weight gradient")
    assert torch.equal(x, before[0]) and torch.equal(g, before[1])


def test_kernel_takes_strided_batches_and_propagates_nan():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 16, 7, 7, generator=gen).contiguous(memory_format=CL)[::2]  # a slice
    g = torch.randn(3, 8, 7, 7, generator=gen).contiguous(memory_format=CL)
    assert x.stride(1) == 1 and not x.is_contiguous(memory_format=CL)
    dw = _ext._C.conv2d_weight_grad_avx2(x, g, 3, 3, [1, 1], [1, 1], [1, 1])
    ref = _reference_weight_grad(x, g, (3, 3), [1, 1], [1, 1], [1, 1])
    testing.assert_close_to_reference(dw, ref, torch.float32, "weight gradient")
    x = x.clone(memory_format=CL)
    x[1, 3, 2, 2] = float("nan")
    dw = _ext._C.conv2d_weight_grad_avx2(x, g, 3, 3, [1, 1], [1, 1], [1, 1])
    ref = _reference_weight_grad(x, g, (3, 3), [1, 1], [1, 1], [1, 1])
    assert torch.equal(torch.isnan(dw), torch.isnan(ref))
    assert torch.isnan(dw[:, 3]).all() and not torch.isnan(dw[:, 2]).any()


def test_kernel_refuses_what_it_cannot_take():
    x = torch.randn(2, 16, 5, 5).contiguous(memory_format=CL)
    g = torch.randn(2, 4, 5, 5).contiguous(memory_format=CL)
    for bad_x, bad_g in [(x.double(), g.double()), (x.contiguous(), g), (x[:, :8], g)]:
        with pytest.raises(RuntimeError, match="conv2d_weight_grad_avx2 takes float32"):
            _ext._C.conv2d_weight_grad_avx2(bad_x, bad_g, 3, 3, [1, 1], [1, 1], [1, 1])
    # a grad that is not this conv's output: refused before any read past its end
    for bad_g, geometry in [
        (g, ([2, 2], [1, 1], [1, 1])),  # stride 2 gives 3x3
        (g[:1], ([1, 1], [1, 1], [1, 1])),  # another batch
        (g, ([1, 1], [0, 0], [1, 1])),  # no padding gives 3x3
    ]:
        with pytest.raises(RuntimeError, match="is not the output size of this conv"):
            _ext._C.conv2d_weight_grad_avx2(x, bad_g, 3, 3, *geometry)
    with pytest.raises(RuntimeError, match="expects a positive kernel size, stride"):
        _ext._C.conv2d_weight_grad_avx2(x, g, 3, 3, [0, 1], [1, 1], [1, 1])


def test_same_bits_for_any_thread_count():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 32, 12, 12, generator=gen).contiguous(memory_format=CL)
    g = torch.randn(4, 20, 12, 12, generator=gen).contiguous(memory_format=CL)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(_ext._C.conv2d_weight_grad_avx2(x, g, 3, 3, [1, 1], [1, 1], [1, 1]))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(results[0], r) for r in results[1:])


# conv2d cases whose input channels are a multiple of 16: (n, c, h, w, oc, k, stride, padding,
# dilation, groups, bias)
CONV_CASES = [
    (2, 16, 9, 7, 5, 3, 1, 1, 1, 1, True),
    (2, 32, 8, 8, 13, 4, 2, 1, 1, 1, False),  # DCGAN discriminator-style
    (1, 16, 7, 9, 6, (3, 2), (2, 1), (0, 1), (2, 1), 1, True),
]
# conv_transpose2d cases whose output channels are (the backward's conv is from them): (n, c, h,
# w, oc, k, stride, padding, output_padding, groups, dilation, bias)
CONVT_CASES = [
    (2, 13, 4, 4, 16, 4, 2, 1, 0, 1, 1, True),  # DCGAN generator-style
    (2, 7, 5, 6, 32, 3, 2, 1, 1, 1, 1, False),  # output_padding: the conv lands on the input
    (1, 5, 3, 5, 16, (2, 3), (1, 2), (0, 1), (0, 1), 1, (1, 2), True),
]


def _conv_inputs(case, x_grad):
    (x, w, b), kw = c2._make(case, torch.float32, "channels_last")
    w = w.detach().contiguous(memory_format=CL)
    inputs = [
        x.detach().requires_grad_(x_grad),
        w.requires_grad_(),
        None if b is None else b.detach().requires_grad_(),
    ]
    return inputs, kw


@pytest.mark.parametrize("x_grad", [False, True], ids=["weight-grads", "all-grads"])
@pytest.mark.parametrize("act,slope", [(None, 0.01), ("leaky_relu", 0.2), ("tanh", 0.01)])
@pytest.mark.parametrize("case", CONV_CASES, ids=c2._case_id)
def test_conv2d_against_float64_reference(case, act, slope, x_grad, always):
    inputs, kw = _conv_inputs(case, x_grad)
    fn, ref = _conv_fns(kw, act, slope)
    grad = torch.empty_like(fn(*inputs)).contiguous(memory_format=CL)
    assert _ext._C.use_conv_wgrad(inputs[0], grad, 1)
    check_against_reference_unmodified(fn, ref, inputs, torch.float32, "cpu conv wgrad")


@pytest.mark.parametrize("act,slope", [(None, 0.01), ("relu", 0.01)])
@pytest.mark.parametrize("case", CONVT_CASES, ids=ct._case_id)
def test_conv_transpose2d_against_float64_reference(case, act, slope, always):
    (x, w, b), kw = ct._make(case, torch.float32, "channels_last", device="cpu")
    w = w.detach().contiguous(memory_format=CL).requires_grad_()
    inputs = [x, w, b]
    fn, ref = ct._fns(kw, act, slope, "cpu")
    y = fn(*inputs)
    assert _ext._C.use_conv_wgrad(torch.empty_like(y).contiguous(memory_format=CL), x, 1)
    check_against_reference_unmodified(fn, ref, inputs, torch.float32, "cpu convT wgrad")


@pytest.mark.parametrize("w_layout", [torch.contiguous_format, CL])
def test_gradient_layouts_match_aten(w_layout):
    for make, fns, case in [
        (_conv_inputs, None, CONV_CASES[1]),
        (None, ct._fns, CONVT_CASES[0]),
    ]:
        if make is not None:
            inputs, kw = make(case, False)
            fn = _conv_fns(kw, "relu", 0.01)[0]
        else:
            (x, w, b), kw = ct._make(case, torch.float32, "channels_last", device="cpu")
            inputs = [x, w, b]
            fn = fns(kw, "relu", 0.01, "cpu")[0]
        inputs[1] = inputs[1].detach().contiguous(memory_format=w_layout).requires_grad_()
        strides = {}
        for name in ("always", "never"):
            with _conv_wgrad.mode(name):
                y = fn(*inputs)
                leaves = [t for t in inputs if t is not None and t.requires_grad]
                grads = torch.autograd.grad(y, leaves, torch.ones_like(y))
                strides[name] = [t.stride() for t in grads]
        assert strides["always"] == strides["never"]


def test_mode_switch():
    check_mode_switch(_conv_wgrad, "conv weight-gradient", _ext._C.conv_wgrad_mode)


# the layers the rule is for: the DCGAN discriminator's 64 -> 128 4x4 s2 and the CIFAR CNN's
# 32 -> 64 3x3 (channels_last, as genkern's models run)
def test_auto_rule():
    x = torch.randn(2, 64, 16, 16).contiguous(memory_format=CL)
    g = torch.randn(2, 128, 8, 8).contiguous(memory_format=CL)
    avx512, intel = _ext._C.avx512_kernels_enabled(), _ext._C.cpu_is_intel()
    with _conv_wgrad.mode("auto"):
        # AVX2 CPUs: every layer it takes; AVX-512 ones: AMD's (measured), 64+ channels a
        # multiple of 32 (the CNN's 32 -> 64 3x3 stays on oneDNN); Intel's keep oneDNN's
        assert _ext._C.use_conv_wgrad(x, g, 1) == (not avx512 or not intel)
        x32 = torch.randn(2, 32, 16, 16).contiguous(memory_format=CL)
        assert _ext._C.use_conv_wgrad(x32, g, 1) == (not avx512)
        x80 = torch.randn(2, 80, 16, 16).contiguous(memory_format=CL)
        assert _ext._C.use_conv_wgrad(x80, g, 1) == (not avx512)
        assert not _ext._C.use_conv_wgrad(x.contiguous(), g.contiguous(), 1)  # NCHW
        assert not _ext._C.use_conv_wgrad(x[:, :40], g, 1)  # 40 channels
        assert not _ext._C.use_conv_wgrad(x, g, 2)  # groups
    with _conv_wgrad.mode("never"):
        assert not _ext._C.use_conv_wgrad(x, g, 1)


def test_opcheck_backward_ops_through_the_kernels(always):
    """opcheck of the backward ops on inputs whose weight gradient the kernels compute (the
    forward ops do not reach them)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 16, 6, 6, generator=gen).contiguous(memory_format=CL)
    w = torch.randn(8, 16, 3, 3, generator=gen).contiguous(memory_format=CL)
    g = torch.randn(2, 8, 3, 3, generator=gen).contiguous(memory_format=CL)
    assert _ext._C.use_conv_wgrad(x, g, 1)
    for mask in ([True, True, True], [False, True, False]):
        args = (g, None, x, w, [2, 2], [1, 1], [1, 1], 1, 0, 0.01, mask, "cpu")
        torch.library.opcheck(torch.ops.genkern.conv2d_act_backward.default, args)
    # a transposed conv 8 -> 16 channels over 3x3 -> 6x6: its output gradient has 16 channels
    wt = torch.randn(8, 16, 4, 4, generator=gen).contiguous(memory_format=CL)
    gy = torch.randn(2, 16, 6, 6, generator=gen).contiguous(memory_format=CL)
    assert _ext._C.use_conv_wgrad(gy, g, 1)
    for mask in ([True, True, True], [False, True, False]):
        args = (gy, None, g, wt, [2, 2], [1, 1], [0, 0], [1, 1], 1, 0, 0.01, mask, "cpu")
        torch.library.opcheck(torch.ops.genkern.conv_transpose2d_act_backward.default, args)


_TILE_BITS = """
import sys, torch
import genkern._ext as e
gen = torch.Generator().manual_seed(5)
CL = torch.channels_last
outs = []
for c, k in [(32, 13), (64, 25), (96, 7)]:
    x = torch.randn(3, c, 10, 8, generator=gen).contiguous(memory_format=CL)
    g = torch.randn(3, k, 5, 4, generator=gen).contiguous(memory_format=CL)
    outs.append(e._C.conv2d_weight_grad_avx2(x, g, 4, 4, [2, 2], [1, 1], [1, 1]))
torch.save(outs, sys.argv[1])
"""


@pytest.mark.skipif(
    not (_ext.HAS_CPU and _ext._C.avx512_kernels_enabled()),
    reason="needs the C++ extension and a CPU with AVX-512 (the 12 x 32 tile)",
)
def test_avx512_tile_gives_the_avx2_tiles_bits(tmp_path):
    """The 12 x 32 AVX-512 tile and the 6 x 16 AVX2 one sum each element as the same chain of
    FMAs over the same pixel blocks: the same bits, over row tails and several column blocks."""
    assert_same_bits_without_avx512(_TILE_BITS, tmp_path)
