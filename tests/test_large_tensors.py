"""More than 2^31 elements: every memory-bound op and loss (marked slow, not in CI).

Index arithmetic must be 64-bit wherever a tensor can pass 2^31 elements. Tensors are bfloat16
(half the memory; about 4.3 GB each) and at most about three are alive at a time; results are
checked on slices past element 2^31 against the reference computed on those slices, and
reductions against float64 sums computed chunk-wise.

Run: `pytest tests/test_large_tensors.py -m slow -q` (about 24 GB RAM machine: one test at a
time; GENKERN_LARGE_BACKEND picks the backend, default "cpu").
"""

import gc
import os

import pytest
import torch
import torch.nn.functional as F

import genkern
from genkern import reference

pytestmark = pytest.mark.slow
BACKEND = os.environ.get("GENKERN_LARGE_BACKEND", "cpu")
BIG = 2**31 + 2**20  # elements
DT = torch.bfloat16


@pytest.fixture(autouse=True)
def _collect():
    gc.collect()
    yield
    gc.collect()


def _fill(t: torch.Tensor, seed=0) -> torch.Tensor:
    """Deterministic values in [-2, 2): filled in chunks (no float32 copy of the whole)."""
    flat = t.view(-1)
    g = torch.Generator().manual_seed(seed)
    step = 2**26
    for i in range(0, flat.numel(), step):
        n = min(step, flat.numel() - i)
        flat[i : i + n] = torch.rand(n, generator=g).mul_(4).sub_(2).to(t.dtype)
    return t


def _close(actual, expected, tol=2e-2):
    torch.testing.assert_close(actual.float(), expected.float(), rtol=tol, atol=tol)


def _chunked_sum64(t: torch.Tensor, fn=lambda v: v) -> float:
    flat, total, step = t.reshape(-1), 0.0, 2**26
    for i in range(0, flat.numel(), step):
        total += fn(flat[i : i + step].double()).sum().item()
    return total


def test_batch_norm_act_past_2_31():
    n, c, h, w = 2, 2, 16384, 32800  # 2.15e9 elements; each channel plane-set over 2^30
    assert n * c * h * w > 2**31
    x = _fill(torch.empty(n, c, h, w, dtype=DT))
    rm, rv = torch.zeros(c), torch.ones(c)
    y = genkern.ops.batch_norm(x, rm, rv, None, None, True, 0.1, 1e-5, "relu", backend=BACKEND)
    for ch in range(c):
        xs = x[:, ch]
        cnt = xs.numel()
        mean = _chunked_sum64(xs) / cnt
        var = _chunked_sum64(xs, lambda v: (v - mean) ** 2) / cnt
        assert abs(rm[ch].item() - 0.1 * mean) < 1e-4
        assert abs(rv[ch].item() - (0.9 + 0.1 * var * cnt / (cnt - 1))) < 1e-3
        tail = x[-1, ch, -4:].double()  # elements past 2^31
        exp = torch.relu((tail - mean) / (var + 1e-5) ** 0.5)
        _close(y[-1, ch, -4:], exp)


def test_max_and_avg_pool_past_2_31():
    x = _fill(torch.empty(2, 4, 16384, 16400, dtype=DT), 1)  # 2.15e9 elements
    assert x.numel() > 2**31
    y = genkern.ops.max_pool2d(x, 2, backend=BACKEND)
    _close(y[-1, -1, -3:], F.max_pool2d(x[-1:, -1:, -6:].float(), 2)[0, 0])
    _close(y[0, 0, :3], F.max_pool2d(x[:1, :1, :6].float(), 2)[0, 0])
    del y
    gc.collect()
    y = genkern.ops.avg_pool2d(x, 3, 2, 1, backend=BACKEND)
    exp = F.avg_pool2d(x[-1:, -1:, -8:].float(), 3, 2, 1)[0, 0, 1:]  # rows off the slice edge
    _close(y[-1, -1, -3:], exp)


def test_upsample_output_past_2_31():
    x = _fill(torch.empty(2, 4, 8192, 8200, dtype=DT), 2)  # output 4x: 2.15e9 elements
    y = genkern.ops.upsample_nearest2d(x, scale_factor=2, backend=BACKEND)
    assert y.numel() > 2**31
    _close(y[-1, -1, -4:], F.interpolate(x[-1:, -1:, -2:].float(), scale_factor=2)[0, 0])


@pytest.mark.parametrize("kind", ["bce", "hinge", "wgan", "lsgan"])
def test_gan_losses_past_2_31(kind):
    x = _fill(torch.empty(BIG, dtype=DT), 3)
    # real = fake = x (one tensor in memory); reference: the float64 means, chunk-wise
    d = genkern.ops.discriminator_loss(x, x, kind, backend=BACKEND)
    terms = {
        "bce": (lambda v: F.softplus(-v), lambda v: F.softplus(v)),
        "hinge": (lambda v: torch.relu(1 - v), lambda v: torch.relu(1 + v)),
        "wgan": (lambda v: -v, lambda v: v),
        "lsgan": (lambda v: 0.5 * (v - 1) ** 2, lambda v: 0.5 * v**2),
    }[kind]
    exp = (_chunked_sum64(x, terms[0]) + _chunked_sum64(x, terms[1])) / x.numel()
    assert abs(d.item() - exp) <= 1e-4 * max(1.0, abs(exp)), (d.item(), exp)
    xg = x.requires_grad_(True)
    g_loss = genkern.ops.generator_loss(xg, kind, backend=BACKEND)
    exp_g = reference.generator_loss(xg.detach()[-(2**20) :].double(), kind)  # a slice's mean
    (grad,) = torch.autograd.grad(g_loss, xg)
    tail = xg.detach()[-8:].double().requires_grad_(True)
    ref = reference.generator_loss(tail, kind) * (8 / BIG)
    (ref_grad,) = torch.autograd.grad(ref, tail)
    torch.testing.assert_close(grad[-8:].double(), ref_grad, rtol=2e-2, atol=1e-12)
    assert torch.isfinite(g_loss) and abs(exp_g.item()) < 10


def test_vae_loss_past_2_31():
    recon = _fill(torch.empty(4, BIG // 4, dtype=DT), 4)
    target = torch.full((1, 1), 0.25, dtype=DT).expand(recon.shape)  # a stride-0 view
    mu, logvar = torch.zeros(4, 8, dtype=DT), torch.zeros(4, 8, dtype=DT)
    for recon_loss in ("bce", "mse"):
        loss = genkern.ops.vae_loss(recon, target, mu, logvar, recon_loss, backend=BACKEND)
        if recon_loss == "bce":
            exp = _chunked_sum64(recon, lambda v: F.softplus(v) - 0.25 * v)
        else:
            exp = _chunked_sum64(recon, lambda v: (v - 0.25) ** 2)
        assert abs(loss.item() - exp) <= 1e-4 * abs(exp), (recon_loss, loss.item(), exp)


def test_reparameterize_past_2_31():
    x = _fill(torch.empty(BIG, dtype=DT), 5)
    z = genkern.ops.reparameterize(x, x, x, backend=BACKEND)  # mu = logvar = eps = x
    tail = x[-8:].float()
    _close(z[-8:], tail + tail * torch.exp(0.5 * tail))
    head = x[:8].float()
    _close(z[:8], head + head * torch.exp(0.5 * head))
