"""The CPU backend's small-GEMM kernel (csrc/cpu/small_gemm.cpp), through genkern.ops.linear:
sizes hitting every tail of its 6 x 16 (AVX2) and 12 x 16 (AVX-512) register tiles, each
activation, with and without bias, non-contiguous inputs, against the float64 reference; bits
independent of the thread count and the same from both tiles; the portable (non-AVX2) code under
GENKERN_CPU_NO_AVX2=1. The dot-product GEMM, which takes many of these forwards on AVX-512 CPUs,
is off here (test_dot_gemm.py runs the same grid through it)."""

import os
import subprocess
import sys

import pytest
import torch
from _helpers import assert_same_bits_without_avx512, subprocess_env
from conftest import grid_backends

import genkern
from genkern import reference, testing
from genkern.ops import _dot_gemm

pytestmark = pytest.mark.skipif(
    "cpu" not in grid_backends(torch.float32), reason="the C++ extension genkern._C is not built"
)

# the subprocesses' environment: the tile, not the dot-product GEMM, on every forward
NO_DOT = {"GENKERN_CPU_DOT_GEMM": "never"}


@pytest.fixture(autouse=True)
def _tile_not_dot():
    with _dot_gemm.mode("never"):
        yield


ACTIVATIONS = [
    (None, 0.01),
    ("relu", 0.01),
    ("leaky_relu", 0.2),
    ("leaky_relu", -0.1),  # the backward needs the pre-activation: the kernel stores both
    ("tanh", 0.01),
    ("sigmoid", 0.01),
    ("silu", 0.01),
]
# M: tiles of 6 (AVX2) and 12 (AVX-512) rows and their tails, in the backward's products (any M;
# on AVX2 CPUs) and in the forward (which takes the kernel from 8 rows on: below, MKL's gemv beats
# packing W^T)
ROWS = [1, 5, 6, 8, 9, 10, 11, 13, 128]
COLS = [1, 3, 8, 10, 16, 17, 33]  # N: panels of 16 (8 for a narrow last one) and tails
DEPTHS = [1, 2, 7, 84, 400]  # K


def _x(m, k, layout, gen):
    """x [m, k]: contiguous, every other column of a wider tensor, a transposed view, or the
    leading columns of a wider tensor ("sliced": rows contiguous, further apart)."""
    if layout == "transposed":
        return testing.make_tensor([k, m], torch.float32, generator=gen).t().requires_grad_()
    if layout == "sliced":
        wide = testing.make_tensor([m, k + 5], torch.float32, generator=gen)
        return wide[:, :k].requires_grad_()
    return testing.make_tensor([m, k], torch.float32, "cpu", layout, True, generator=gen)


def _check(m, n, k, act, slope, bias, layout, gen):
    x = _x(m, k, layout, gen)
    w = _x(n, k, "sliced" if layout == "sliced" else "contiguous", gen)
    b = testing.make_tensor([n], torch.float32, requires_grad=True, generator=gen) if bias else None
    testing.check_against_reference(
        lambda x, w, b: genkern.ops.linear(x, w, b, act, slope, backend="cpu"),
        lambda x, w, b: reference.linear(x, w, b, act, slope),
        [x, w, b],
        torch.float32,
        f"M={m} N={n} K={k} {act} bias={bias} {layout}",
    )


@pytest.mark.parametrize("act,slope", ACTIVATIONS)
@pytest.mark.parametrize("m", ROWS)
def test_tails_against_float64_reference(m, act, slope):
    gen = torch.Generator().manual_seed(m)
    layouts = ["contiguous", "noncontiguous", "transposed", "sliced"]
    for i, n in enumerate(COLS):
        for j, k in enumerate(DEPTHS):
            for bias in (True, False):
                _check(m, n, k, act, slope, bias, layouts[(i + j + bias) % 4], gen)


def _run(x, w, b, act, slope, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        xs, ws, bs = (t.detach().clone().requires_grad_() for t in (x, w, b))
        y = genkern.ops.linear(xs, ws, bs, act, slope, backend="cpu")
        grads = torch.autograd.grad(y, (xs, ws, bs), torch.ones_like(y))
        return [y, *grads]
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("m,k,n", [(128, 400, 33), (128, 400, 20), (128, 84, 120), (20, 128, 400)])
@pytest.mark.parametrize("act,slope", [("relu", 0.01), ("silu", 0.01)])
def test_bits_do_not_depend_on_threads(m, k, n, act, slope):
    gen = torch.Generator().manual_seed(0)
    x = testing.make_tensor([m, k], torch.float32, generator=gen)
    w = testing.make_tensor([n, k], torch.float32, generator=gen)
    b = testing.make_tensor([n], torch.float32, generator=gen)
    one, two = _run(x, w, b, act, slope, 1), _run(x, w, b, act, slope, 2)
    for a, c in zip(one, two):
        assert torch.equal(a, c)


def _cpuinfo_vendor_and_flags():
    with open("/proc/cpuinfo") as f:
        fields = dict(
            line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line
        )
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return fields.get("vendor_id", ""), set(fields.get("flags", "").split())


@pytest.mark.skipif(
    not os.path.exists("/proc/cpuinfo") or os.uname().machine != "x86_64",
    reason="reads the CPU's vendor and flags from Linux's /proc/cpuinfo on x86-64",
)
def test_blas_width():
    """Which GEMM engine runs the wider vectors, from the CPU's vendor and flags as Linux reports
    them: MKL runs AVX-512 kernels only on Intel's AVX-512 CPUs (elsewhere its AVX2 code), so the
    paths that trade oneDNN's convs for ATen's GEMMs (Winograd, conv GEMM) pay only where it runs
    as wide as oneDNN."""
    vendor, flags = _cpuinfo_vendor_and_flags()
    avx512 = "avx512f" in flags
    assert genkern._ext._C.blas_runs_avx512() == (avx512 and vendor == "GenuineIntel")
    assert genkern._ext._C.blas_as_wide_as_onednn() == (not avx512 or vendor == "GenuineIntel")


@pytest.mark.skipif(
    os.environ.get("GENKERN_CPU_NO_AVX2", "0") not in ("", "0"), reason="already the portable code"
)
def test_portable_code_without_avx2():
    """The same tail tests with GENKERN_CPU_NO_AVX2=1 (read once per process: a subprocess)."""
    env = subprocess_env(GENKERN_CPU_NO_AVX2="1", **NO_DOT)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
            __file__,
            "-k",
            "tails and (relu or sigmoid or None) or bits",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


_TILE_BITS = """
import sys, torch, genkern
from genkern import testing
gen = torch.Generator().manual_seed(0)
outs = []
for m, k, n in [(128, 84, 120), (13, 20, 33), (9, 128, 17), (30, 7, 8), (25, 1, 40)]:
    x = testing.make_tensor([m, k], torch.float32, generator=gen)
    w = testing.make_tensor([n, k], torch.float32, generator=gen)
    b = testing.make_tensor([n], torch.float32, generator=gen)
    with torch.no_grad():
        outs.append(genkern.ops.linear(x, w, b, "leaky_relu", 0.2, backend="cpu"))
        outs.append(genkern.ops.linear(x, w, None, None, 0.01, backend="cpu"))
torch.save(outs, sys.argv[1])
"""


@pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() != "AVX512", reason="needs a CPU with AVX-512"
)
def test_avx512_tile_gives_the_avx2_tiles_bits(tmp_path):
    """The 12-row AVX-512 tile and the 6-row AVX2 one sum each element as the same chain of FMAs:
    the same bits, over tiles with every row and column tail (the forward's packed products)."""
    assert_same_bits_without_avx512(_TILE_BITS, tmp_path, NO_DOT)


def test_backward_products_side_by_side_leave_no_history():
    """On two threads the backward's two products run side by side on the pool's threads (each
    with its own grad mode): the gradients must come back as plain tensors, equal to one
    thread's."""
    gen = torch.Generator().manual_seed(3)
    x = testing.make_tensor([128, 400], torch.float32, generator=gen)
    w = testing.make_tensor([33, 400], torch.float32, generator=gen)
    b = testing.make_tensor([33], torch.float32, generator=gen)
    two = _run(x, w, b, "relu", 0.01, 2)
    for g in two[1:]:
        assert not g.requires_grad and g.grad_fn is None
    for a, c in zip(two, _run(x, w, b, "relu", 0.01, 1)):
        assert torch.equal(a, c)


_ONEDNN_PAIR = """
import torch, genkern
torch.set_num_threads(2)
torch.backends.mkldnn.matmul.fp32_precision = "bf16"  # at::mm on oneDNN, not MKL
x, w, b = (torch.randn(*s, requires_grad=True) for s in ((128, 784), (400, 784), (400,)))
for _ in range(5):
    y = genkern.ops.linear(x, w, b, "relu", backend="cpu")
    grads = torch.autograd.grad(y, (x, w, b), torch.ones_like(y))
y = torch.relu(torch.nn.functional.linear(x, w, b))
for a, r in zip(grads, torch.autograd.grad(y, (x, w, b), torch.ones_like(y))):
    assert (a - r).abs().max() <= 1e-2 * r.abs().max(), (a - r).abs().max()
"""


def test_backward_pair_side_by_side_on_onednn_matmul():
    """With fp32 matmul precision bf16 the pair's products run on oneDNN inside the parallel region
    (oneDNN's conv backward deadlocks there: its weight-gradient reduction waits for the threads it
    planned for); they must finish, and agree with stock's."""
    env = subprocess_env()
    run = subprocess.run(
        [sys.executable, "-c", _ONEDNN_PAIR], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
