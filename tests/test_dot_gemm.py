"""The CPU backend's dot-product GEMM (csrc/cpu/dot_gemm.cpp, switched by
genkern/ops/_dot_gemm.py), the linear forward of batch-1 layers (and more on AVX-512 CPUs; AVX2
ones run 2x4 blocks of 8-lane steps, test_avx2_kernels_on_an_avx512_cpu runs those on AVX-512
CPUs too): the small-GEMM grid (every tail of its blocks and of its k steps, each activation,
with and without bias) run through it with mode "always", rows of x and W that are slices of
wider tensors, bits independent of the thread count, the rule pinned on the layers it is for,
and the calls it must decline."""

import pytest
import test_small_gemm as sg
import torch
from _helpers import run_without_avx512
from conftest import grid_backends

import genkern
from genkern import _ext, reference, testing
from genkern import activations as A
from genkern.ops import _dot_gemm

pytestmark = [
    pytest.mark.skipif(
        "cpu" not in grid_backends(torch.float32),
        reason="the C++ extension genkern._C is not built",
    ),
    pytest.mark.skipif(
        not (_ext.HAS_CPU and _ext._C.avx2_kernels_enabled()),
        reason="the dot-product GEMM needs a CPU with AVX2 (and GENKERN_CPU_NO_AVX2 unset)",
    ),
]
_AVX512 = _ext.HAS_CPU and _ext._C.avx512_kernels_enabled()  # (no extension: False)


@pytest.fixture
def always():
    with _dot_gemm.mode("always"):
        yield


@pytest.mark.parametrize("act,slope", sg.ACTIVATIONS)
@pytest.mark.parametrize("m", sg.ROWS)
def test_tails_against_float64_reference(m, act, slope, always):
    gen = torch.Generator().manual_seed(m)
    for i, n in enumerate(sg.COLS):
        for j, k in enumerate([*sg.DEPTHS, 16, 17]):
            for bias in (True, False):
                sg._check(m, n, k, act, slope, bias, "contiguous" if (i + j) % 2 else "sliced", gen)


def test_sliced_operands_are_read_in_place(always):
    """Rows of x and W that are the leading columns of wider tensors (k-contiguous, rows further
    apart) and a strided bias: the kernel reads them where they are."""
    gen = torch.Generator().manual_seed(1)
    x = testing.make_tensor([9, 70], torch.float32, generator=gen)[:, 3:40]
    w = testing.make_tensor([6, 50], torch.float32, generator=gen)[:, 5:42]
    b = testing.make_tensor([12], torch.float32, generator=gen)[::2]
    assert x.stride(1) == 1 and w.stride(1) == 1 and not x.is_contiguous()
    with torch.no_grad():
        y = genkern.ops.linear(x, w, b, "relu", backend="cpu")
    ref = reference.linear(x.double(), w.double(), b.double(), "relu")
    testing.assert_close_to_reference(y, ref, torch.float32)


@pytest.mark.parametrize("m,k,n", [(128, 400, 20), (1, 400, 20), (13, 100, 33), (128, 784, 10)])
def test_bits_do_not_depend_on_threads(m, k, n, always):
    gen = torch.Generator().manual_seed(0)
    x = testing.make_tensor([m, k], torch.float32, generator=gen)
    w = testing.make_tensor([n, k], torch.float32, generator=gen)
    b = testing.make_tensor([n], torch.float32, generator=gen)
    one, two = sg._run(x, w, b, "leaky_relu", -0.1, 1), sg._run(x, w, b, "leaky_relu", -0.1, 2)
    for a, c in zip(one, two):
        assert torch.equal(a, c)


def test_differs_from_the_tile_only_by_rounding():
    """The same layer through the dot GEMM and through the broadcast tile: float32 rounding apart
    (the sums are ordered differently), so the switch really changes the path."""
    gen = torch.Generator().manual_seed(2)
    x = testing.make_tensor([128, 400], torch.float32, generator=gen)
    w = testing.make_tensor([20, 400], torch.float32, generator=gen)
    with torch.no_grad(), _dot_gemm.mode("always"):
        dot = genkern.ops.linear(x, w, None, backend="cpu")
    with torch.no_grad(), _dot_gemm.mode("never"):
        other = genkern.ops.linear(x, w, None, backend="cpu")
    assert not torch.equal(dot, other)
    torch.testing.assert_close(dot, other, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not _AVX512, reason="the AVX-512 rule (test_avx2_rule: this CPU's)")
def test_rule_takes_the_layers_it_is_for():
    use = _ext._C.use_dot_gemm
    assert _dot_gemm.MODES.index("auto") == _ext._C.dot_gemm_mode()
    # the VAE's mu head, the CIFAR CNN's fc1, batch-1 layers of every width
    assert use(128, 20, 400) and use(128, 120, 400) and use(32, 120, 400)
    assert use(1, 20, 400) and use(1, 400, 20) and use(1, 1024, 1024)
    # left to the tile (short k) and to MKL (many outputs over many rows)
    assert not use(128, 400, 20) and not use(128, 10, 32)
    assert not use(128, 400, 784) and not use(128, 784, 400)
    with _dot_gemm.mode("never"):
        assert not use(1, 20, 400)
    with _dot_gemm.mode("always"):
        assert use(128, 784, 400)


@pytest.mark.skipif(_AVX512, reason="an AVX-512 CPU: its own rule")
def test_avx2_rule():
    use = _ext._C.use_dot_gemm  # (M, N, K)
    # batch-1 layers: the VAE decoder's and the CIFAR CNN's
    assert use(1, 256, 20) and use(1, 3136, 256) and use(1, 256, 2048) and use(1, 10, 256)
    # a long k: the VAE's mu head, the CNN's fc1, DCGAN-64's last conv as a dense layer
    assert use(128, 40, 3136) and use(128, 256, 2048) and use(64, 1, 8192)
    # a short k over many rows, and many rows over a k of 256, stay with the tile and MKL
    assert not use(128, 256, 20) and not use(32, 64, 100) and not use(256, 256, 256)
    with _dot_gemm.mode("never"):
        assert not use(1, 20, 400)


@pytest.mark.skipif(not _AVX512, reason="no AVX-512 here: every test ran the AVX2 kernels")
def test_avx2_kernels_on_an_avx512_cpu():
    run_without_avx512(__file__, "tails or sliced or bits or opcheck")


def test_bad_mode_raises():
    with pytest.raises(ValueError, match="dot GEMM mode must be one of"):
        _dot_gemm.set_mode("sometimes")
    with pytest.raises(RuntimeError, match="dot GEMM mode must be 0"):
        _ext._C.set_dot_gemm_mode(3)


@pytest.mark.parametrize("act,slope", [("leaky_relu", -0.1), ("sigmoid", 0.01), (None, 0.01)])
def test_opcheck_through_the_dot_gemm(act, slope, always):
    """genkern::linear_act's registration (fake, autograd, schema) with its float32 CPU forward on
    the dot GEMM, the pre-activation saved where the activation's backward needs it."""
    gen = torch.Generator().manual_seed(4)
    x = testing.make_tensor([9, 40], torch.float32, requires_grad=True, generator=gen)
    w = testing.make_tensor([6, 40], torch.float32, requires_grad=True, generator=gen)
    b = testing.make_tensor([6], torch.float32, requires_grad=True, generator=gen)
    act_id = A.activation_id(act)
    assert _ext._C.use_dot_gemm(9, 6, 40)
    args = (x, w, b, act_id, slope, not A.saves_output(act_id, slope), "cpu")
    torch.library.opcheck(torch.ops.genkern.linear_act.default, args)
