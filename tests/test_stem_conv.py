"""The cpu backend's few-input-channel conv kernels (csrc/cpu/stem_conv.h, switched by
genkern/ops/_stem_conv.py): a net's first conv, forward and weight / bias gradients, on direct
AVX-512 kernels, or AVX2 ones on a CPU without AVX-512 (test_avx2_kernels_on_an_avx512_cpu runs
those on AVX-512 CPUs too). They take float32 only, so every case runs in float32 against the
float64 reference (float64 calls never reach them: ATen's kernels, covered by the float64 grids
and gradcheck of test_conv2d.py). Every one-group shape of the conv2d grid goes through them with
mode "always", with and without the input's gradient (which picks the fused weight-gradient
kernel); the measured rule ("auto") is pinned on the layers it is for."""

import os
import subprocess
import sys

import pytest
import test_col2im_path as col2im_tests
import test_conv2d as c2
import test_conv_transpose2d as ct
import torch
import torch.nn.functional as F
from _helpers import check_against_reference_unmodified, check_mode_switch, run_without_avx512

import genkern
from genkern import _ext, activations, backends, testing
from genkern.ops import _conv_gemm, _conv_wgrad, _fused, _stem_conv, _winograd

pytestmark = pytest.mark.skipif(
    backends.unavailable_reason("cpu", torch.device("cpu"), torch.float32) is not None
    or not (_ext.HAS_CPU and _ext._C.avx2_kernels_enabled()),
    reason="the C++ extension is not built, or this CPU has no AVX2 (the kernels need it)",
)
_AVX512 = _ext.HAS_CPU and _ext._C.avx512_kernels_enabled()  # (no extension: False)

ONE_GROUP = [case for case in c2.SHAPES if case[9] == 1]
ONE_GROUP_CONVT = [case for case in ct.SHAPES if case[9] == 1] + [
    (2, 64, 5, 4, 3, 4, 2, 1, 0, 1, 1, False),  # a generator's last layer (backward: 3 -> 64)
    (2, 40, 9, 8, 1, 4, 2, 1, 1, 1, 1, True),  # a decoder's, output_padding, several chunks
]
# beside the grid: several 64-channel passes with a ragged last one (130), weight-gradient chunks
# of whole samples and of row bands (41 x 37 output pixels a sample: 4 bands), more chunks than
# partial-sum groups (5 samples x 4 bands > 16), 48 taps in blocks, one output channel, a 5x5
# kernel with dilation and padding over the input's size
EXTRA = [
    (2, 3, 40, 36, 130, 4, 2, 1, 1, 1, True),
    (2, 3, 40, 36, 64, 4, 1, 2, 1, 1, False),
    (5, 2, 48, 40, 16, 3, 1, 1, 1, 1, True),
    (3, 1, 9, 11, 1, 5, 1, 4, 2, 1, True),
    (1, 4, 6, 5, 20, 3, 1, 3, 1, 1, True),
]
ACTS = [
    (None, 0.01),
    ("relu", 0.01),
    ("leaky_relu", 0.2),  # fused in the forward's registers
    ("leaky_relu", -0.1),  # keeps the pre-activation: the kernel writes it, activation after
    ("tanh", 0.01),
    ("silu", 0.01),
]


_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


@pytest.fixture
def always():
    with _stem_conv.mode("always"):
        yield


_fns = col2im_tests._conv_fns  # the cpu backend's conv2d and its float64 reference


def _make(case, layout, x_grad):
    (x, w, b), kw = c2._make(case, torch.float32, layout)
    x = x.detach().cpu().requires_grad_(x_grad)
    w, b = [None if t is None else t.detach().cpu().requires_grad_() for t in (w, b)]
    if layout == "channels_last":  # the weight too (channels_last strides even for one input
        # channel, as Module.to(memory_format=...) gives): the layout genkern's models run in
        cl = torch.empty(w.shape, memory_format=torch.channels_last).copy_(w.detach())
        w = cl.requires_grad_()
    return [x, w, b], kw


@pytest.mark.parametrize("x_grad", [False, True], ids=["weight-grads", "all-grads"])
@pytest.mark.parametrize("layout", testing.LAYOUTS)
@pytest.mark.parametrize("act,slope", ACTS)
@pytest.mark.parametrize("case", ONE_GROUP + EXTRA, ids=c2._case_id)
def test_against_float64_reference(case, act, slope, layout, x_grad, always):
    inputs, kw = _make(case, layout, x_grad)
    x, w, _ = inputs
    assert _ext._C.use_stem_conv(x, w, 1)
    check_against_reference_unmodified(*_fns(kw, act, slope), inputs, torch.float32, "cpu stem")


@pytest.mark.parametrize("layout", testing.LAYOUTS)
@pytest.mark.parametrize("act,slope", [(None, 0.01), ("tanh", 0.01), ("leaky_relu", 0.2)])
@pytest.mark.parametrize("case", ONE_GROUP_CONVT, ids=ct._case_id)
def test_conv_transpose2d_backward_against_float64_reference(case, act, slope, layout, always):
    # the backward of a transposed conv is a conv from its output's channels: the stem kernels
    # where that conv lands on the input's size (output_padding < stride), ATen's elsewhere
    inputs, kw = ct._make(case, torch.float32, layout, device="cpu")
    fn, ref = ct._fns(kw, act, slope, "cpu")
    check_against_reference_unmodified(fn, ref, inputs, torch.float32, "cpu stem convT")


@pytest.mark.parametrize("w_layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_output_and_gradient_layouts_match_aten(layout, w_layout):
    inputs, kw = _make(EXTRA[0], layout, True)
    inputs[1] = inputs[1].detach().contiguous(memory_format=_FORMATS[w_layout]).requires_grad_()
    fn = _fns(kw, "leaky_relu", 0.2)[0]
    strides = {}
    for name in ("always", "never"):
        with _stem_conv.mode(name):
            y = fn(*inputs)
            grads = torch.autograd.grad(y, inputs, torch.ones_like(y))
            strides[name] = [y.stride()] + [g.stride() for g in grads]
    assert strides["always"] == strides["never"]
    inputs, kw = ct._make(ONE_GROUP_CONVT[-2], torch.float32, layout, device="cpu")
    inputs = list(inputs)
    inputs[1] = inputs[1].detach().contiguous(memory_format=_FORMATS[w_layout]).requires_grad_()
    fn = ct._fns(kw, "tanh", 0.01, "cpu")[0]
    strides = {}
    for name in ("always", "never"):
        with _stem_conv.mode(name):
            y = fn(*inputs)
            grads = torch.autograd.grad(y, inputs[:2], torch.ones_like(y))
            strides[name] = [g.stride() for g in grads]
    assert strides["always"] == strides["never"]


@pytest.mark.parametrize("fast_eager", [True, False])  # the C++ path, the custom op
@pytest.mark.parametrize("mode", ["always", "auto", "wgrad"])
@pytest.mark.parametrize("layouts", ["lcc", "clc", "ccl", "lll"])
def test_head_gradient_layouts_are_stocks(layouts, mode, fast_eager, monkeypatch):
    # a DCGAN generator's head (64 -> 3, 4x4, stride 2) with x, the weight and the output gradient
    # in each mix of layouts (c: contiguous, l: channels_last): ATen's gradients follow x's and
    # the weight's layouts alone (found by a fuzz: the weight gradient followed the output
    # gradient's). "wgrad": a 32 -> 16 layer's weight gradient on conv_wgrad.h's kernel, the
    # other paths off
    monkeypatch.setattr(_fused, "FAST_EAGER", fast_eager)
    fmt = [_FORMATS["channels_last" if c == "l" else "contiguous"] for c in layouts]
    gen = torch.Generator().manual_seed(0)
    cin, cout = (32, 16) if mode == "wgrad" else (64, 3)
    x = torch.randn(2, cin, 8, 8, generator=gen).contiguous(memory_format=fmt[0])
    w = (torch.randn(cin, cout, 4, 4, generator=gen) * 0.05).contiguous(memory_format=fmt[1])
    g = torch.randn(2, cout, 16, 16, generator=gen).contiguous(memory_format=fmt[2])
    modes = {"stem": mode, "wgrad": "auto", "gemm": "auto", "wino": "auto"}
    if mode == "wgrad":
        modes = {"stem": "never", "wgrad": "always", "gemm": "never", "wino": "never"}
    results = []
    for op in (genkern.ops.conv_transpose2d, F.conv_transpose2d):
        xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
        with (
            _stem_conv.mode(modes["stem"]),
            _conv_wgrad.mode(modes["wgrad"]),
            _conv_gemm.mode(modes["gemm"]),
            _winograd.mode(modes["wino"]),
        ):
            results.append(torch.autograd.grad(op(xi, wi, None, 2, 1), (xi, wi), g))
    for ours, stock in zip(*results):
        assert ours.stride() == stock.stride()
        torch.testing.assert_close(ours, stock, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("act", ["relu", "sigmoid", "silu", "tanh"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_same_bits_for_any_thread_count(layout, act, always):
    # sigmoid and silu ran on ATen's kernels, whose scalar tails round differently from their
    # vector bodies (found by the fuzz: 1 ulp apart between 1 and 2 threads)
    inputs, kw = _make(EXTRA[2], layout, False)
    fn = _fns(kw, act, 0.01)[0]
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            y = fn(*inputs)
            leaves = [t for t in inputs[1:] if t is not None]
            results.append([y, *torch.autograd.grad(y, leaves, torch.ones_like(y))])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


# NCHW outputs of 4 MB or more leave through non-temporal stores (layout_copy.h): D1's shape at
# batch 16 (whole aligned lines), and 31 x 31 planes (rows not 16-float aligned: plain stores)
@pytest.mark.parametrize("hw", [64, 62])
def test_streamed_nchw_output_matches_per_sample_calls(hw, always):
    n = 16 if hw == 64 else 18
    x = torch.randn(n, 3, hw, hw)
    w, b = torch.randn(64, 3, 4, 4) * 0.2, torch.randn(64)
    fn = _fns(dict(stride=2, padding=1, dilation=1, groups=1), "leaky_relu", 0.2)[0]
    y = fn(x, w, b)  # the per-sample calls below are 0.25 MB each: plain stores
    assert y.numel() * 4 >= 4 << 20 and y.is_contiguous()
    assert torch.equal(y, torch.cat([fn(x[i : i + 1], w, b) for i in range(n)]))
    ref = F.leaky_relu(F.conv2d(x.double(), w.double(), b.double(), 2, 1), 0.2)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("act,slope", [("relu", 0.01), ("leaky_relu", 0.2), (None, 0.01)])
def test_special_values_match_stock(act, slope, always):
    # NaN and +-inf through the fused epilogue: NaN propagates (relu(NaN) = NaN), -0 passes
    inputs, kw = _make(EXTRA[1], "channels_last", False)
    x = inputs[0].detach().clone()
    x[0, 0, 3, 4], x[1, 2, 10, 10], x[0, 1, 20, 7] = float("nan"), float("inf"), -float("inf")
    fn = _fns(kw, act, slope)[0]
    y = fn(x, *inputs[1:])
    stock = F.conv2d(x, inputs[1], inputs[2], **kw)
    stock = {None: stock, "relu": F.relu(stock), "leaky_relu": F.leaky_relu(stock, slope)}[act]
    assert torch.equal(torch.isnan(y), torch.isnan(stock))
    assert torch.equal(torch.isinf(y), torch.isinf(stock))
    finite = torch.isfinite(stock)
    torch.testing.assert_close(y[finite], stock[finite], rtol=1e-4, atol=1e-4)


def test_opcheck_float32(always):
    (x, w, b), kw = _make(c2.SHAPES[1], "channels_last", True)
    for act, slope in [("leaky_relu", 0.2), ("silu", 0.01), (None, 0.01)]:
        act_id = activations.activation_id(act)
        keep = not activations.saves_output(act_id, slope)
        args = (x, w, b, [2, 2], [1, 1], [1, 1], 1, act_id, slope, keep, "cpu")
        torch.library.opcheck(torch.ops.genkern.conv2d_act.default, args)
        y, preact = torch.ops.genkern.conv2d_act(
            *[a.detach() if torch.is_tensor(a) else a for a in args]
        )
        saved = None if act is None else (preact if keep else y)
        for mask in ([True, True, True], [False, True, True], [False, True, False]):
            bargs = (torch.randn_like(y), saved, x.detach(), w.detach(), [2, 2], [1, 1], [1, 1])
            bargs += (1, act_id, slope, mask, "cpu")
            torch.library.opcheck(torch.ops.genkern.conv2d_act_backward.default, bargs)


# the layers the rule is for: DCGAN's 3 -> 64 4x4 s2, the CIFAR CNN's 3 -> 32 3x3, the
# autoencoder's 1 -> 32 3x3 and the VAE's 1 -> 32 4x4 s2 first convs (channels_last weights)
AUTO = [
    (2, 3, 16, 16, 64, 4, 2, 1, 1, 1, False),
    (2, 3, 8, 8, 32, 3, 1, 1, 1, 1, True),
    (2, 1, 7, 7, 32, 3, 1, 1, 1, 1, True),
    (2, 1, 8, 8, 32, 4, 2, 1, 1, 1, True),
]


@pytest.mark.parametrize("case", AUTO, ids=c2._case_id)
def test_auto_rule_takes_first_layers(case):
    inputs, kw = _make(case, "channels_last", False)
    x, w, _ = inputs
    with _stem_conv.mode("auto"):
        assert _ext._C.use_stem_conv(x, w, 1)
        assert _ext._C.use_stem_conv(x.contiguous(), w, 1)  # an NCHW image batch: CL output
        assert _ext._C.use_stem_conv(x.contiguous(), w.contiguous(), 1)  # NCHW output
        testing.check_against_reference(
            *_fns(kw, "leaky_relu", 0.2), inputs, torch.float32, "cpu stem auto"
        )


@pytest.mark.parametrize("case", ONE_GROUP_CONVT[-2:], ids=ct._case_id)
def test_auto_rule_takes_last_layers_backward(case):
    inputs, kw = ct._make(case, torch.float32, "channels_last", device="cpu")
    inputs = list(inputs)
    w = inputs[1].detach()
    inputs[1] = torch.empty(w.shape, memory_format=torch.channels_last).copy_(w).requires_grad_()
    fn, ref = ct._fns(kw, "tanh", 0.01, "cpu")
    with _stem_conv.mode("auto"):
        y = fn(*inputs)
        assert _ext._C.use_stem_conv(y, inputs[1], 1)  # its backward's conv: y's channels -> x's
        testing.check_against_reference(fn, ref, inputs, torch.float32, "cpu stem convT auto")


def test_rule_leaves_other_convs_to_onednn():
    x = torch.zeros(2, 3, 8, 8)
    w_cl = torch.zeros(64, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    with _stem_conv.mode("auto"):
        assert not _ext._C.use_stem_conv(x.double(), w_cl.double(), 1)  # float64
        assert not _ext._C.use_stem_conv(x.bfloat16(), w_cl.bfloat16(), 1)
        assert not _ext._C.use_stem_conv(torch.zeros(2, 6, 8, 8), w_cl.repeat(1, 2, 1, 1), 3)
        wide = torch.zeros(64, 8, 3, 3).contiguous(memory_format=torch.channels_last)
        assert not _ext._C.use_stem_conv(torch.zeros(2, 8, 8, 8), wide, 1)  # 8 input channels
        big = torch.zeros(64, 3, 5, 5).contiguous(memory_format=torch.channels_last)
        assert not _ext._C.use_stem_conv(x, big, 1)  # 75 taps
    with _stem_conv.mode("always"):
        assert not _ext._C.use_stem_conv(x.double(), w_cl.double(), 1)  # float32 kernels only
        assert not _ext._C.use_stem_conv(torch.zeros(0, 3, 8, 8), w_cl, 1)
    with _stem_conv.mode("never"):
        assert not _ext._C.use_stem_conv(x, w_cl, 1)


def test_mode_names():
    check_mode_switch(_stem_conv, "stem conv", _ext._C.stem_conv_mode)


def test_no_avx2_means_aten():
    # GENKERN_CPU_NO_AVX2=1 (read once per process): the rule declines, the conv still works
    code = (
        "import torch, genkern\n"
        "from genkern import _ext\n"
        "from genkern.ops import _stem_conv\n"
        "x = torch.randn(2, 3, 8, 8)\n"
        "w = torch.randn(8, 3, 3, 3).contiguous(memory_format=torch.channels_last)\n"
        "with _stem_conv.mode('always'):\n"
        "    assert not _ext._C.use_stem_conv(x, w, 1)\n"
        "    y = genkern.ops.conv2d(x, w, None, 1, 1, activation='relu', backend='cpu')\n"
        "torch.testing.assert_close(y, torch.relu(torch.nn.functional.conv2d(x, w, None, 1, 1)))\n"
    )
    env = dict(os.environ, GENKERN_CPU_NO_AVX2="1")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


@pytest.mark.skipif(not _AVX512, reason="no AVX-512 here: every test ran the AVX2 kernels")
def test_avx2_kernels_on_an_avx512_cpu():
    """The reference grid's one-group shapes and the extra ones, and the bits for any thread
    count, on the AVX2 kernels (GENKERN_CPU_NO_AVX512=1, read once per process: a subprocess)."""
    run_without_avx512(
        __file__, "test_against_float64_reference or test_same_bits or test_special_values"
    )
