"""genkern.ops GAN/VAE losses and reparameterize against the float64 reference, every backend."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _helpers import assert_unchanged, clones
from conftest import DEVICE, grid_backends

import genkern
from genkern import reference, testing
from genkern.ops import _fused
from genkern.ops import losses as L

KINDS = list(L.GAN_KINDS)
# (real size, fake size): odd sizes, 1 element, different sizes, PatchGAN-like 4-D
SIZES = [
    ((1,), (1,)),
    ((7,), (5,)),
    ((3, 1, 3, 3), (2, 1, 3, 3)),
    ((4097,), (4095,)),
    ((1000003,), (77,)),
]
SMALL_SIZES = SIZES[:4]


def _logits(shape, dtype, requires_grad=True, scale=3.0):
    return testing.make_tensor(shape, dtype, DEVICE, "contiguous", requires_grad, -scale, scale)


def _id(s):
    return "-".join("x".join(map(str, t)) for t in s)


@pytest.mark.parametrize("backend", grid_backends(torch.float64))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sizes", SIZES, ids=_id)
def test_discriminator_loss_float64(sizes, kind, backend):
    r, f = _logits(sizes[0], torch.float64), _logits(sizes[1], torch.float64)
    before = clones([r, f])
    testing.check_against_reference(
        lambda r, f: genkern.ops.discriminator_loss(r, f, kind, backend=backend),
        lambda r, f: reference.discriminator_loss(r, f, kind),
        [r, f],
        torch.float64,
        backend,
    )
    assert_unchanged(before, [r, f])


@pytest.mark.parametrize("backend", grid_backends(torch.float64))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sizes", SMALL_SIZES, ids=_id)
def test_generator_loss_float64(sizes, kind, backend):
    f = _logits(sizes[1], torch.float64)
    before = clones([f])
    testing.check_against_reference(
        lambda f: genkern.ops.generator_loss(f, kind, backend=backend),
        lambda f: reference.generator_loss(f, kind),
        [f],
        torch.float64,
        backend,
    )
    assert_unchanged(before, [f])


@pytest.mark.parametrize("backend", grid_backends(torch.float64))
@pytest.mark.parametrize("kind", KINDS)
def test_custom_op_path_float64(kind, backend, monkeypatch):
    monkeypatch.setattr(_fused, "FAST_EAGER", False)
    r, f = _logits((7,), torch.float64), _logits((2, 5), torch.float64)
    testing.check_against_reference(
        lambda r, f: genkern.ops.discriminator_loss(r, f, kind, backend=backend),
        lambda r, f: reference.discriminator_loss(r, f, kind),
        [r, f],
        torch.float64,
        backend,
    )
    testing.check_against_reference(
        lambda f: genkern.ops.generator_loss(f, kind, backend=backend),
        lambda f: reference.generator_loss(f, kind),
        [f],
        torch.float64,
        backend,
    )
    inputs = _vae_inputs(torch.float64)
    testing.check_against_reference(
        lambda *a: genkern.ops.vae_loss(*a, beta=0.5, reduction="mean", backend=backend),
        lambda *a: reference.vae_loss(*a, beta=0.5, reduction="mean"),
        inputs,
        torch.float64,
        backend,
    )


@pytest.mark.parametrize("backend", grid_backends(torch.float32))
@pytest.mark.parametrize("kind", KINDS)
def test_gan_losses_float32_noncontiguous(kind, backend):
    r = testing.make_tensor((6, 9), torch.float32, DEVICE, "noncontiguous", True, -4, 4)
    f = testing.make_tensor((5, 1, 4, 4), torch.float32, DEVICE, "channels_last", True, -4, 4)
    testing.check_against_reference(
        lambda r, f: genkern.ops.discriminator_loss(r, f, kind, backend=backend),
        lambda r, f: reference.discriminator_loss(r, f, kind),
        [r, f],
        torch.float32,
        backend,
    )
    testing.check_against_reference(
        lambda f: genkern.ops.generator_loss(f, kind, backend=backend),
        lambda f: reference.generator_loss(f, kind),
        [f],
        torch.float32,
        backend,
    )


VAE_CASES = [("bce", True), ("bce", False), ("mse", True)]


def _vae_inputs(dtype, shape=(3, 1, 5, 7), latent=(3, 4), logits=True, grads=(True,) * 4):
    x = testing.make_tensor(shape, dtype, DEVICE, "contiguous", grads[0], -3, 3)
    if not logits:
        x = testing.make_tensor(shape, dtype, DEVICE, "contiguous", grads[0], 0.02, 0.98)
    t = testing.make_tensor(shape, dtype, DEVICE, "contiguous", grads[1], 0, 1)
    mu = testing.make_tensor(latent, dtype, DEVICE, "contiguous", grads[2], -2, 2)
    lv = testing.make_tensor(latent, dtype, DEVICE, "contiguous", grads[3], -3, 2)
    return [x, t, mu, lv]


@pytest.mark.parametrize("backend", grid_backends(torch.float64))
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("recon,logits", VAE_CASES)
@pytest.mark.parametrize(
    "shape,latent", [((3, 1, 5, 7), (3, 4)), ((1, 3), (1, 1)), ((5, 4099), (5, 3))]
)
def test_vae_loss_float64(shape, latent, recon, logits, reduction, backend):
    inputs = _vae_inputs(torch.float64, shape, latent, logits)
    before = clones(inputs)
    kw = dict(recon_loss=recon, beta=0.7, reduction=reduction, logits=logits)
    # every component's value, and gradients flowing through all three outputs
    ours = genkern.ops.vae_loss(*inputs, **kw, return_components=True, backend=backend)
    ref = reference.vae_loss(*[t.detach() for t in inputs], **kw, return_components=True)
    for comp in range(3):
        testing.assert_close_to_reference(ours[comp], ref[comp], torch.float64, f"comp {comp}")

    def weighted(fn):
        def run(*a):
            total, rec, kl = fn(*a, **kw, return_components=True)
            return total + 2 * rec + 3 * kl

        return run

    testing.check_against_reference(
        weighted(lambda *a, **k: genkern.ops.vae_loss(*a, **k, backend=backend)),
        weighted(reference.vae_loss),
        inputs,
        torch.float64,
        backend,
    )
    assert_unchanged(before, inputs)


@pytest.mark.parametrize("backend", grid_backends(torch.float32))
@pytest.mark.parametrize("recon,logits", VAE_CASES)
def test_vae_loss_float32(recon, logits, backend):
    inputs = _vae_inputs(torch.float32, (4, 3, 6, 6), (4, 8), logits, (True, False, True, True))
    kw = dict(recon_loss=recon, beta=2.0, reduction="mean", logits=logits)
    testing.check_against_reference(
        lambda *a: genkern.ops.vae_loss(*a, **kw, backend=backend),
        lambda *a: reference.vae_loss(*a, **kw),
        inputs,
        torch.float32,
        backend,
    )


@pytest.mark.parametrize("backend", grid_backends(torch.float64))
def test_reparameterize(backend):
    mu, lv, eps = (
        testing.make_tensor((3, 5), torch.float64, DEVICE, "contiguous", True) for _ in range(3)
    )
    before = clones([mu, lv, eps])
    testing.check_against_reference(
        lambda m, v, e: genkern.ops.reparameterize(m, v, e, backend=backend),
        reference.reparameterize,
        [mu, lv, eps],
        torch.float64,
        backend,
    )
    assert_unchanged(before, [mu, lv, eps])
    gen = torch.Generator(device=DEVICE).manual_seed(3)
    z = genkern.ops.reparameterize(mu, lv, generator=gen, backend=backend)
    eps2 = torch.randn(
        mu.shape,
        dtype=mu.dtype,
        device=DEVICE,
        generator=torch.Generator(device=DEVICE).manual_seed(3),
    )
    expected = reference.reparameterize(mu, lv, eps2)
    if backend == "cpu":  # the eager cpu path draws its own eps (test_reparameterize_draws_*)
        expected = reference.reparameterize(mu, lv, (z - mu) / torch.exp(0.5 * lv))
    torch.testing.assert_close(z, expected)


# ---- reparameterize's own draws (cpu backend, eager: Philox + Box-Muller in the kernel) --------

_cpu_only = pytest.mark.skipif(
    "cpu" not in grid_backends(torch.float32), reason="the cpu backend is not built"
)


def _draw(n, dtype=torch.float32, generator=None, lv=0.0):
    mu = torch.zeros(n, dtype=dtype)
    return genkern.ops.reparameterize(
        mu, torch.full_like(mu, lv), generator=generator, backend="cpu"
    )


@_cpu_only
def test_reparameterize_draws_are_reproducible():
    torch.manual_seed(7)
    a, b = _draw(1000), _draw(1000)
    torch.manual_seed(7)
    assert torch.equal(_draw(1000), a) and torch.equal(_draw(1000), b)
    assert not torch.equal(a, b)  # successive calls differ
    # the generator argument is honoured, and the default generator left alone
    torch.manual_seed(7)
    g1 = _draw(1000, generator=torch.Generator().manual_seed(1))
    assert torch.equal(_draw(1000), a)
    assert torch.equal(_draw(1000, generator=torch.Generator().manual_seed(1)), g1)
    assert not torch.equal(_draw(1000, generator=torch.Generator().manual_seed(2)), g1)
    # an element's draw depends on its index alone: a prefix of a bigger draw, any thread count
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        big = _draw(100_003, generator=torch.Generator().manual_seed(1))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(big[:1000], g1)
    assert torch.equal(_draw(100_003, generator=torch.Generator().manual_seed(1)), big)


def _normal_cdf(x):
    return 0.5 * torch.erfc(-x / math.sqrt(2.0))


@_cpu_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_reparameterize_draws_are_standard_normal(dtype):
    n = 1_000_000
    z = _draw(n, dtype, torch.Generator().manual_seed(11)).double()
    assert torch.isfinite(z).all()
    assert abs(z.mean().item()) < 5 / math.sqrt(n)
    tol = 5e-3 if dtype != torch.bfloat16 else 1e-2  # bf16 rounds each draw to 8 bits
    assert abs(z.std().item() - 1) < tol
    # Kolmogorov-Smirnov statistic vs the normal CDF (critical value at 1e-6: about 0.0026)
    if dtype != torch.bfloat16:
        s, _ = z.sort()
        cdf = _normal_cdf(s)
        i = torch.arange(1, n + 1, dtype=torch.float64)
        ks = torch.maximum(i / n - cdf, cdf - (i - 1) / n).max().item()
        assert ks < 0.002, ks
    # no correlation between neighbours, nor between the four normals of one Philox call
    for lag in (1, 4, 64, 128, 256):
        r = torch.corrcoef(torch.stack([z[:-lag], z[lag:]]))[0, 1].item()
        assert abs(r) < 5 / math.sqrt(n), (lag, r)
    # the tails are there: P(|z| > 4) = 6.3e-5, 63 expected
    assert 30 < (z.abs() > 4).sum().item() < 110


@_cpu_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reparameterize_draws_gradients(dtype):
    gen = torch.Generator().manual_seed(5)
    mu = testing.make_tensor((37, 11), dtype, "cpu", "contiguous", True)
    lv = testing.make_tensor((37, 11), dtype, "cpu", "contiguous", True)
    z = genkern.ops.reparameterize(mu, lv, generator=gen, backend="cpu")
    w = torch.randn(z.shape, dtype=dtype, generator=gen)
    gm, gl = torch.autograd.grad((z * w).sum(), [mu, lv])
    m64, l64 = (t.detach().double().requires_grad_() for t in (mu, lv))
    eps = (z.detach().double() - m64.detach()) / torch.exp(0.5 * l64.detach())
    z64 = reference.reparameterize(m64, l64, eps)
    rm, rl = torch.autograd.grad((z64 * w.double()).sum(), [m64, l64])
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z.double(), z64.detach(), **tol)
    torch.testing.assert_close(gm.double(), rm, **tol)
    torch.testing.assert_close(gl.double(), rl, **tol)


@_cpu_only
def test_reparameterize_eps_given_same_on_both_eager_paths(monkeypatch):
    mu, lv, eps = (
        testing.make_tensor((5, 300), torch.float32, "cpu", "contiguous", True) for _ in range(3)
    )
    outs = []
    for fast in (True, False):
        monkeypatch.setattr(_fused, "FAST_EAGER", fast)
        z = genkern.ops.reparameterize(mu, lv, eps, backend="cpu")
        outs.append((z, *torch.autograd.grad(z.square().sum(), [mu, lv, eps])))
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-6)


# ---- extreme values ---------------------------------------------------------------------------

INF, NAN = math.inf, math.nan
# (kind, real logits, fake logits, expected D loss, expected G loss)
EXTREMES = [
    ("bce", [1e4, 1e4], [-1e4], 0.0, 1e4),
    ("bce", [-1e4], [1e4], 2e4, 0.0),
    ("bce", [INF], [-INF], 0.0, INF),
    ("bce", [-INF], [-INF], INF, INF),
    ("bce", [INF, 0.0], [INF], INF, math.log(2) * 0 + 0.0),
    ("hinge", [INF], [-INF], 0.0, INF),
    ("lsgan", [1e4], [-1e4], 0.5 * (1e4 - 1) ** 2 + 0.5 * 1e8, 0.5 * (1e4 + 1) ** 2),
]


@pytest.mark.parametrize("backend", grid_backends(torch.float32))
@pytest.mark.parametrize("case", EXTREMES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_extreme_logits(case, backend):
    kind, rv, fv, d_expected, g_expected = case
    if rv == [INF, 0.0]:
        d_expected, g_expected = INF, 0.0
    r = torch.tensor(rv, dtype=torch.float32, device=DEVICE, requires_grad=True)
    f = torch.tensor(fv, dtype=torch.float32, device=DEVICE, requires_grad=True)
    before = clones([r, f])
    d = genkern.ops.discriminator_loss(r, f, kind, backend=backend)
    g = genkern.ops.generator_loss(f, kind, backend=backend)
    assert d.dtype == torch.float32 and d.dim() == 0
    torch.testing.assert_close(d.item(), float(d_expected), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g.item(), float(g_expected), rtol=1e-5, atol=1e-6)
    gr, gf = torch.autograd.grad(d, (r, f))
    (gg,) = torch.autograd.grad(g, (f,))
    for grad in (gr, gf, gg):
        assert torch.isfinite(grad).all(), grad
    assert_unchanged(before, [r, f])


@pytest.mark.parametrize("backend", grid_backends(torch.float32))
def test_bce_gradients_at_infinity(backend):
    r = torch.tensor([INF, -INF, 1e4, -1e4], device=DEVICE, requires_grad=True)
    f = torch.tensor([INF, -INF, 1e4, -1e4], device=DEVICE, requires_grad=True)
    d = genkern.ops.discriminator_loss(r, f, "bce", backend=backend)
    gr, gf = torch.autograd.grad(d, (r, f))
    torch.testing.assert_close(gr.cpu(), torch.tensor([0.0, -0.25, 0.0, -0.25]))
    torch.testing.assert_close(gf.cpu(), torch.tensor([0.25, 0.0, 0.25, 0.0]))


# |x| around 87-89, where float32's exp(-|x|) leaves the normal range: the CPU kernels cut it to 0
# above 87 (exp_math.h's exp_neg), each element's gradient stays within float32's reach of the
# float64 one, and the loss (means and sums of softplus) stays float32-exact there.
CUT_POINTS = (0.5, 80, 84, 86.5, 86.9, 87, 87.2, 87.7, 88, 88.7, 89.5)
NEAR_CUT = [s * v for v in CUT_POINTS for s in (1, -1)]
CUT_ATOL = 2e-38  # > exp(-87), the most the cut drops; < exp(-86.5)


@pytest.mark.parametrize("backend", grid_backends(torch.float32))
def test_bce_near_the_exp_cut(backend):
    x64 = torch.tensor(NEAR_CUT, dtype=torch.float64, device=DEVICE)
    x = x64.float().requires_grad_()
    n = x.numel()
    d = genkern.ops.discriminator_loss(x, x, "bce", backend=backend)
    g = genkern.ops.generator_loss(x, "bce", backend=backend)
    (gd,) = torch.autograd.grad(d, [x])
    (gg,) = torch.autograd.grad(g, [x])
    ref_d = (F.softplus(-x64).mean() + F.softplus(x64).mean()).item()
    ref_g = F.softplus(-x64).mean().item()
    torch.testing.assert_close(d.item(), ref_d, rtol=1e-6, atol=0)
    torch.testing.assert_close(g.item(), ref_g, rtol=1e-6, atol=0)
    # d/dx of mean softplus(-x) + mean softplus(x) = (sigmoid(x) - sigmoid(-x)) / n
    ref_gd = (torch.sigmoid(x64) - torch.sigmoid(-x64)) / n
    torch.testing.assert_close(gd.double().cpu(), ref_gd.cpu(), rtol=1e-6, atol=CUT_ATOL / n)
    ref_gg = -torch.sigmoid(-x64) / n
    torch.testing.assert_close(gg.double().cpu(), ref_gg.cpu(), rtol=1e-6, atol=CUT_ATOL / n)
    t = (x64 > 0).float()  # each logit's own side: the per-element losses are ~e^-|x|
    (gx,) = torch.autograd.grad(
        genkern.ops.vae_loss(x[None], t[None], x[None, :2], x[None, :2].detach(), backend=backend),
        [x],
    )
    ref_gx = torch.sigmoid(x64) - t.double()
    ref_gx[:2] += x64[:2]  # the KL term's d/dmu = mu, mu being x[:2]
    torch.testing.assert_close(gx.double().cpu(), ref_gx.cpu(), rtol=1e-6, atol=CUT_ATOL)


@pytest.mark.parametrize("backend", grid_backends(torch.float32))
@pytest.mark.parametrize("kind", KINDS)
def test_nan_propagates(kind, backend):
    r = torch.tensor([0.5, NAN], device=DEVICE, requires_grad=True)
    f = torch.tensor([0.1], device=DEVICE, requires_grad=True)
    assert torch.isnan(genkern.ops.discriminator_loss(r, f, kind, backend=backend))
    assert torch.isnan(genkern.ops.generator_loss(r, kind, backend=backend))


@pytest.mark.parametrize("backend", grid_backends(torch.float32))
def test_vae_extremes(backend):
    # BCE-with-logits: +-inf logits at matching 0/1 targets give 0, not nan; large logvar stays
    # finite in float32 where exp does not overflow (as torch's composite).
    x = torch.tensor([[INF, -INF, 1e4, -1e4]], device=DEVICE, requires_grad=True)
    t = torch.tensor([[1.0, 0.0, 1.0, 0.0]], device=DEVICE)
    mu = torch.zeros(1, 2, device=DEVICE, requires_grad=True)
    lv = torch.tensor([[0.0, 80.0]], device=DEVICE, requires_grad=True)
    total, rec, kl = genkern.ops.vae_loss(x, t, mu, lv, return_components=True, backend=backend)
    assert rec.item() == 0.0
    stock_kl = -0.5 * torch.sum(1 + lv - mu**2 - lv.exp())
    torch.testing.assert_close(kl, stock_kl.detach())
    gx, glv = torch.autograd.grad(total, (x, lv))
    assert torch.isfinite(gx).all() and torch.isfinite(glv).all()
    x2 = torch.tensor([[NAN, 0.0]], device=DEVICE)
    assert torch.isnan(genkern.ops.vae_loss(x2, torch.zeros_like(x2), mu, lv, backend=backend))


@pytest.mark.parametrize("path", ["fast", "op", "compiled"])
@pytest.mark.parametrize("backend", grid_backends(torch.float32))
def test_vae_one_component_backward_leaves_the_others_alone(backend, path, monkeypatch):
    # found by the fuzz: through the custom op, backward of the recon term alone sent zeros as the
    # kl output's gradient, and 0 * the saved infinite d/dlogvar (logvar 100 in float32) gave NaN
    monkeypatch.setattr(_fused, "FAST_EAGER", path != "op")
    torch._dynamo.reset()

    def loss(*a):
        return genkern.ops.vae_loss(*a, recon_loss="mse", return_components=True, backend=backend)

    fn = torch.compile(loss, fullgraph=True, backend="eager") if path == "compiled" else loss
    x = torch.tensor([[0.2, 0.7]], device=DEVICE, requires_grad=True)
    t = torch.tensor([[0.1, 0.9]], device=DEVICE)
    mu = torch.tensor([[0.5, -0.5]], device=DEVICE, requires_grad=True)
    lv = torch.tensor([[100.0, 0.0]], device=DEVICE, requires_grad=True)
    _, rec, _ = fn(x, t, mu, lv)
    rec.backward()
    torch.testing.assert_close(x.grad, 2 * (x - t).detach())
    assert mu.grad is None and lv.grad is None
    x.grad = None
    _, _, kl = fn(torch.tensor([[INF, 0.0]], device=DEVICE, requires_grad=True), t, mu, lv)
    kl.backward()  # the recon term's gradients (infinite at recon = inf) are not taken
    torch.testing.assert_close(mu.grad, mu.detach())
    assert torch.isfinite(lv.grad[0, 1]) and x.grad is None


# ---- dtypes, autocast -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", grid_backends(torch.float16))
def test_low_precision_accumulates_in_float32(dtype, backend):
    r, f = _logits((4099,), dtype), _logits((3, 1, 8, 8), dtype)
    d = genkern.ops.discriminator_loss(r, f, "bce", backend=backend)
    assert d.dtype == torch.float32
    ref = reference.discriminator_loss(r.detach().double(), f.detach().double(), "bce")
    # inputs are exact in float64: a float32 accumulation is accurate to ~1e-6
    torch.testing.assert_close(d.double(), ref, rtol=1e-5, atol=1e-6)
    gr, gf = torch.autograd.grad(d, (r, f))
    assert gr.dtype == dtype and gf.dtype == dtype
    rr, ff = r.detach().double().requires_grad_(), f.detach().double().requires_grad_()
    grr, gff = torch.autograd.grad(reference.discriminator_loss(rr, ff, "bce"), (rr, ff))
    rtol = testing.tolerance(dtype)[0]
    torch.testing.assert_close(gr.double(), grr, rtol=rtol, atol=rtol * grr.abs().max().item())
    inputs = _vae_inputs(dtype)
    total = genkern.ops.vae_loss(*inputs, backend=backend)
    assert total.dtype == torch.float32
    ref = reference.vae_loss(*[t.detach().double() for t in inputs])
    torch.testing.assert_close(total.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", grid_backends(torch.float32))
def test_autocast(backend):
    dev_type = "cuda" if DEVICE.startswith("cuda") else "cpu"
    lin = torch.nn.Linear(8, 1).to(DEVICE)
    dec = torch.nn.Linear(8, 12).to(DEVICE)
    x = torch.randn(6, 8, device=DEVICE)
    target = torch.rand(6, 12, device=DEVICE)
    with torch.autocast(dev_type, dtype=torch.bfloat16):
        logits = lin(x)
        d = genkern.ops.discriminator_loss(logits, logits * 0.5, "bce", backend=backend)
        recon = torch.sigmoid(dec(x))
        v = genkern.ops.vae_loss(
            recon,
            target.to(recon.dtype),
            x[:, :4].to(recon.dtype),
            x[:, 4:].to(recon.dtype),
            logits=False,
            backend=backend,
        )
    assert d.dtype == torch.float32 and v.dtype == torch.float32
    (d + v).backward()
    assert lin.weight.grad is not None and torch.isfinite(lin.weight.grad).all()


# ---- gradcheck, opcheck, compile -------------------------------------------------------------


@pytest.mark.skipif(
    "cpu" not in grid_backends(torch.float64), reason="the C++ extension genkern._C is not built"
)
@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_cpu_gan(kind):
    r = torch.randn(5, dtype=torch.float64) * 3
    f = torch.randn(2, 3, dtype=torch.float64) * 3
    r, f = r.requires_grad_(), f.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda r, f: genkern.ops.discriminator_loss(r, f, kind, backend="cpu"), (r, f)
    )
    assert torch.autograd.gradcheck(
        lambda f: genkern.ops.generator_loss(f, kind, backend="cpu"), (f,)
    )


@pytest.mark.skipif(
    "cpu" not in grid_backends(torch.float64), reason="the C++ extension genkern._C is not built"
)
@pytest.mark.parametrize("recon,logits", VAE_CASES)
def test_gradcheck_cpu_vae(recon, logits):
    inputs = [t.cpu() for t in _vae_inputs(torch.float64, (2, 3), (2, 2), logits)]

    def fn(*a):
        total, rec, kl = genkern.ops.vae_loss(
            *a,
            recon_loss=recon,
            beta=0.3,
            logits=logits,
            reduction="mean",
            return_components=True,
            backend="cpu",
        )
        return total, rec * 2, kl * 3

    assert torch.autograd.gradcheck(fn, inputs)
    mu, lv, eps = (torch.randn(2, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(
        lambda m, v, e: genkern.ops.reparameterize(m, v, e, backend="cpu"), (mu, lv, eps)
    )


@pytest.mark.parametrize("backend", grid_backends(torch.float64))
def test_opcheck(backend):
    r, f = _logits((5,), torch.float64), _logits((2, 3), torch.float64)
    torch.library.opcheck(
        torch.ops.genkern.gan_loss.default,
        (r, f, L.SOFTPLUS_NEG, L.SOFTPLUS_POS, True, True, backend),
    )
    torch.library.opcheck(
        torch.ops.genkern.gan_loss.default, (None, f, 0, L.SQ_ONE, False, True, backend)
    )
    inputs = _vae_inputs(torch.float64, (2, 3), (2, 2))
    torch.library.opcheck(
        torch.ops.genkern.vae_loss.default,
        (*inputs, L.RECON_BCE_LOGITS, 0.5, 0.5, 0b1111, backend),
    )
    torch.library.opcheck(
        torch.ops.genkern.vae_loss.default,
        (*inputs, L.RECON_MSE, 1.0, 1.0, 0b1001, backend),  # recon and logvar
    )
    mu, lv, eps = (_logits((2, 3), torch.float64) for _ in range(3))
    torch.library.opcheck(torch.ops.genkern.reparameterize.default, (mu, lv, eps, backend))


def _tiny_gan(seed=0):
    torch.manual_seed(seed)
    G = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 6))
    D = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.LeakyReLU(0.2), torch.nn.Linear(16, 1))
    return G.to(DEVICE).double(), D.to(DEVICE).double()


def _stock_d(r, f):
    return F.binary_cross_entropy_with_logits(
        r, torch.ones_like(r)
    ) + F.binary_cross_entropy_with_logits(f, torch.zeros_like(f))


def _stock_g(f):
    return F.binary_cross_entropy_with_logits(f, torch.ones_like(f))


def _train_gan(d_loss, g_loss, steps=4, compile=False):
    G, D = _tiny_gan()
    opt_g = torch.optim.Adam(G.parameters(), 1e-2)
    opt_d = torch.optim.Adam(D.parameters(), 1e-2)
    gen = torch.Generator().manual_seed(1)
    real = torch.randn(8, 6, generator=gen, dtype=torch.float64).to(DEVICE) + 2

    def d_step(z):  # the forward of a D step; its backward is compiled by AOT autograd
        return d_loss(D(real), D(G(z).detach()))

    def g_step(z):
        return g_loss(D(G(z)))

    if compile:
        d_step = torch.compile(d_step, fullgraph=True, backend="aot_eager")
        g_step = torch.compile(g_step, fullgraph=True, backend="aot_eager")
    losses = []
    for _ in range(steps):
        z = torch.randn(8, 4, generator=gen, dtype=torch.float64).to(DEVICE)
        opt_d.zero_grad()
        ld = d_step(z)
        ld.backward()
        opt_d.step()
        opt_g.zero_grad()
        lg = g_step(z)
        lg.backward()
        opt_g.step()
        losses.append((ld.item(), lg.item()))
    return losses


@pytest.mark.parametrize("fast_eager", [True, False])
@pytest.mark.parametrize("backend", grid_backends(torch.float64))
def test_tiny_gan_trains_like_stock(backend, fast_eager, monkeypatch):
    # both eager paths: straight to the kernel (default), and through the registered custom op
    monkeypatch.setattr(_fused, "FAST_EAGER", fast_eager)
    stock = _train_gan(_stock_d, _stock_g)
    ours = _train_gan(
        lambda r, f: genkern.ops.discriminator_loss(r, f, backend=backend),
        lambda f: genkern.ops.generator_loss(f, backend=backend),
    )
    torch.testing.assert_close(ours, stock, rtol=1e-9, atol=1e-9)


def test_tiny_gan_compiled_fullgraph():
    torch._dynamo.reset()
    loss = genkern.nn.GANLoss("bce")
    stock = _train_gan(_stock_d, _stock_g, steps=2)
    ours = _train_gan(loss.discriminator, loss.generator, steps=2, compile=True)
    torch.testing.assert_close(ours, stock, rtol=1e-9, atol=1e-9)


def test_compile_inductor_no_graph_break():
    torch._dynamo.reset()

    def fn(r, f, x, t, mu, lv):
        return genkern.ops.discriminator_loss(r, f, "hinge") + genkern.ops.vae_loss(
            x, t, mu, lv, reduction="mean"
        )

    args = [
        _logits((5,), torch.float32),
        _logits((3,), torch.float32),
        *_vae_inputs(torch.float32, (2, 3), (2, 2)),
    ]
    explanation = torch._dynamo.explain(fn)(*args)
    assert explanation.graph_break_count == 0
    torch.testing.assert_close(torch.compile(fn, fullgraph=True)(*args), fn(*args))


@pytest.mark.parametrize("fast_eager", [True, False])
@pytest.mark.parametrize("backend", grid_backends(torch.float64))
def test_tiny_vae_trains_like_stock(backend, fast_eager, monkeypatch):
    monkeypatch.setattr(_fused, "FAST_EAGER", fast_eager)

    def train(loss_fn):
        torch.manual_seed(0)
        enc = torch.nn.Linear(12, 8).to(DEVICE).double()
        dec = torch.nn.Linear(4, 12).to(DEVICE).double()
        opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], 1e-2)
        gen = torch.Generator().manual_seed(2)
        x = torch.rand(6, 12, generator=gen, dtype=torch.float64).to(DEVICE)
        out = []
        for _ in range(4):
            h = enc(x)
            mu, lv = h[:, :4], h[:, 4:]
            eps = torch.randn(mu.shape, generator=gen, dtype=torch.float64).to(DEVICE)
            z = (
                genkern.ops.reparameterize(mu, lv, eps, backend=backend)
                if loss_fn is not None
                else mu + eps * torch.exp(0.5 * lv)
            )
            logits = dec(z)
            if loss_fn is None:
                loss = reference.vae_loss(logits, x, mu, lv, reduction="mean")
            else:
                loss = loss_fn(logits, x, mu, lv)
            opt.zero_grad()
            loss.backward()
            opt.step()
            out.append(loss.item())
        return out

    vae = genkern.nn.VAELoss(reduction="mean", backend=backend)
    torch.testing.assert_close(train(vae), train(None), rtol=1e-9, atol=1e-9)


# ---- modules, misc, bad inputs ---------------------------------------------------------------


def test_modules():
    loss = genkern.nn.GANLoss("lsgan")
    r, f = _logits((4,), torch.float64), _logits((3,), torch.float64)
    torch.testing.assert_close(loss(r, f), reference.discriminator_loss(r, f, "lsgan"))
    torch.testing.assert_close(loss(f), reference.generator_loss(f, "lsgan"))
    assert "lsgan" in repr(loss)
    vae = genkern.nn.VAELoss("mse", beta=4.0)
    inputs = _vae_inputs(torch.float64)
    torch.testing.assert_close(vae(*inputs), reference.vae_loss(*inputs, "mse", 4.0))


def test_deterministic_and_thread_independent():
    if "cpu" not in grid_backends(torch.float32):
        pytest.skip("the C++ extension genkern._C is not built")
    r, f = _logits((300001,), torch.float32, False), _logits((70001,), torch.float32, False)
    a = genkern.ops.discriminator_loss(r, f, backend="cpu")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        b = genkern.ops.discriminator_loss(r, f, backend="cpu")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(a, b)


def test_empty_inputs_give_nan_like_torch_mean():
    for backend in grid_backends(torch.float32):
        e = torch.empty(0, device=DEVICE, requires_grad=True)
        assert torch.isnan(genkern.ops.generator_loss(e, backend=backend))


_R, _F = torch.randn(4), torch.randn(5)
_VAE = [torch.randn(2, 3), torch.rand(2, 3), torch.randn(2, 2), torch.randn(2, 2)]
BAD_INPUTS = [
    (
        "unknown kind",
        lambda: genkern.ops.discriminator_loss(_R, _F, "wasserstein"),
        ValueError,
        "kind must be one of 'bce', 'hinge', 'wgan', 'lsgan'",
    ),
    (
        "unknown kind G",
        lambda: genkern.ops.generator_loss(_F, "ns"),
        ValueError,
        "kind must be one of",
    ),
    ("module kind", lambda: genkern.nn.GANLoss("x"), ValueError, "kind must be one of"),
    ("integer logits", lambda: genkern.ops.generator_loss(_F.long()), TypeError, "floating-point"),
    (
        "mixed with integer logits",
        lambda: genkern.ops.discriminator_loss(_R, _F.long()),
        TypeError,
        "floating-point",
    ),
    (
        "target size",
        lambda: genkern.ops.vae_loss(_VAE[0], torch.rand(2, 4), *_VAE[2:]),
        ValueError,
        r"Target size \(torch.Size\(\[2, 4\]\)\) must be the same as input size "
        r"\(torch.Size\(\[2, 3\]\)\)",
    ),
    (
        "logvar size",
        lambda: genkern.ops.vae_loss(*_VAE[:3], torch.randn(2, 3)),
        ValueError,
        "logvar size",
    ),
    (
        "recon loss",
        lambda: genkern.ops.vae_loss(*_VAE, recon_loss="l1"),
        ValueError,
        "recon_loss must be one of 'bce', 'mse'",
    ),
    (
        "reduction",
        lambda: genkern.ops.vae_loss(*_VAE, reduction="none"),
        ValueError,
        "none is not a valid value for reduction",
    ),
    ("beta", lambda: genkern.ops.vae_loss(*_VAE, beta="1"), TypeError, "beta must be a float"),
    (
        "eps size",
        lambda: genkern.ops.reparameterize(_VAE[2], _VAE[3], torch.randn(3)),
        ValueError,
        "eps size",
    ),
    (
        "unknown backend",
        lambda: genkern.ops.generator_loss(_F, backend="metal"),
        ValueError,
        "backend must be one of",
    ),
]


@pytest.mark.parametrize("desc,fn,exc,pattern", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_raise_clearly(desc, fn, exc, pattern):
    with pytest.raises(exc, match=pattern):
        fn()


def test_backward_with_unit_grad_retain_graph_and_accumulation():
    for backend in grid_backends(torch.float64):
        f = _logits((9,), torch.float64)
        loss = genkern.ops.generator_loss(f, backend=backend)
        loss.backward(retain_graph=True)
        first = f.grad.clone()
        loss.backward()  # accumulates: twice the gradient
        torch.testing.assert_close(f.grad, 2 * first)
        ref = f.detach().requires_grad_()
        reference.generator_loss(ref).backward()
        torch.testing.assert_close(first, ref.grad)
        # a gradient handed out by autograd.grad is the caller's: modifying it in place neither
        # corrupts the retained graph nor makes autograd refuse it (stock's behaviour)
        loss2 = genkern.ops.generator_loss(f, backend=backend)
        (g,) = torch.autograd.grad(loss2, f, retain_graph=True)
        g.mul_(0)
        (g2,) = torch.autograd.grad(loss2, f)
        torch.testing.assert_close(g2, first)


def _unit_grad_cases(backend):
    """(name, fn, inputs) of each fused loss whose backward gets a CPU 1 (loss.backward()):
    the gradients of the forward's pass are handed out as they are when the graph is freed."""
    vae = _vae_inputs(torch.float64)
    mu, lv = (_logits((1,), torch.float64) for _ in range(2))
    return [
        (
            "d",
            lambda r, f: genkern.ops.discriminator_loss(r, f, "lsgan", backend=backend),
            [_logits((6,), torch.float64), _logits((5,), torch.float64)],
        ),
        (
            "g",
            lambda f: genkern.ops.generator_loss(f, backend=backend),
            [_logits((7,), torch.float64)],
        ),
        ("vae", lambda *a: genkern.ops.vae_loss(*a, backend=backend), vae),
        (
            "reparam",
            lambda m, v: genkern.ops.reparameterize(m, v, torch.ones(1), backend=backend),
            [mu, lv],
        ),
    ]


@pytest.mark.parametrize("backend", grid_backends(torch.float64))
def test_unit_grad_under_retain_graph_hands_out_gradients_of_their_own(backend):
    # Under retain_graph the saved gradient serves the next backward: each call's gradient has
    # storage of its own, and hooks changing it in place (even through .data, which no version
    # counter sees) change nothing in later backwards, as with stock's losses.
    for name, fn, inputs in _unit_grad_cases(backend):
        out = fn(*inputs)
        first = torch.autograd.grad(out, inputs, retain_graph=True)
        second = torch.autograd.grad(out, inputs, retain_graph=True)
        for a, b in zip(first, second):
            assert a.data_ptr() != b.data_ptr(), name
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
        leaf = inputs[0]
        handle = leaf.register_hook(lambda g: g.data.mul_(0.5))
        try:
            grads = []
            for _ in range(3):
                leaf.grad = None
                out.backward(retain_graph=True)
                grads.append(leaf.grad.clone())
        finally:
            handle.remove()
        for g in grads:
            torch.testing.assert_close(g, 0.5 * first[0], rtol=0, atol=0, msg=name)


def _scaled_backward_cases(backend):
    """(name, fn, inputs) whose backward scales gradients the forward saved (g != 1)."""
    f = _logits((6, 7), torch.float64)
    r = _logits((5,), torch.float64)
    vae = _vae_inputs(torch.float64)
    mu, lv, eps = (_logits((4, 3), torch.float64) for _ in range(3))
    return [
        ("d", lambda r, f: genkern.ops.discriminator_loss(r, f, backend=backend), [r, f]),
        ("vae", lambda *a: genkern.ops.vae_loss(*a, beta=0.6, backend=backend), vae),
        ("reparam", lambda *a: genkern.ops.reparameterize(*a, backend=backend), [mu, lv, eps]),
    ]


@pytest.mark.parametrize("backend", grid_backends(torch.float64))
def test_scaled_backward_is_repeatable_and_leaves_saved_tensors_alone(backend):
    # The CPU eager backward may scale its saved gradient in place: only when the graph is freed
    # afterwards and no saved-tensor hook holds the buffer. Same gradients in every situation.
    for name, fn, inputs in _scaled_backward_cases(backend):
        out = fn(*inputs)
        g = torch.full_like(out, -1.75) if out.dim() else torch.tensor(-1.75, dtype=out.dtype)
        first = torch.autograd.grad(out, inputs, g, retain_graph=True)
        again = torch.autograd.grad(out, inputs, g)  # frees the graph: may scale in place
        for a, b in zip(first, again):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
        packed = []

        def pack(t):
            packed.append(t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = fn(*inputs)
        snapshot = [t.clone() for t in packed]
        hooked = torch.autograd.grad(out, inputs, g)
        for a, b in zip(first, hooked):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
        for t, before in zip(packed, snapshot):
            assert torch.equal(t, before), f"{name}: a hook's saved tensor was modified"


@pytest.mark.parametrize("backend", grid_backends(torch.float64))
def test_vae_components_backward_alone(backend):
    # a backward through one component only: the others' gradients are absent, not zeros
    inputs = _vae_inputs(torch.float64)
    for comp in range(3):
        ours = genkern.ops.vae_loss(*inputs, beta=0.6, return_components=True, backend=backend)
        ref = reference.vae_loss(*inputs, beta=0.6, return_components=True)
        got = torch.autograd.grad(ours[comp] * 1.5, inputs[::2] + inputs[3:], allow_unused=True)
        want = torch.autograd.grad(ref[comp] * 1.5, inputs[::2] + inputs[3:], allow_unused=True)
        for a, b in zip(got, want):
            if b is None:
                assert a is None or not a.any(), f"component {comp}"
            else:
                torch.testing.assert_close(a, b, msg=f"component {comp}")


@pytest.mark.parametrize("backend", grid_backends(torch.float32))
def test_reparameterize_promotes_mixed_dtypes_as_stock(backend):
    # found by the fuzz: a float32 eps with bfloat16 mu and logvar (autocast makes them) was
    # refused; stock's mu + eps * exp(logvar / 2) computes in the common dtype
    mu = torch.randn(4, 8, device=DEVICE).bfloat16().requires_grad_()
    lv = torch.randn(4, 8, device=DEVICE).bfloat16().requires_grad_()
    eps = torch.randn(4, 8, device=DEVICE)
    z = genkern.ops.reparameterize(mu, lv, eps, backend=backend)
    assert z.dtype == (mu + eps * torch.exp(0.5 * lv)).dtype == torch.float32
    m64, l64 = (t.detach().double().requires_grad_() for t in (mu, lv))
    ref = m64 + eps.double() * torch.exp(0.5 * l64)  # stock rounds exp to bfloat16: not the bar
    torch.testing.assert_close(z.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    g = torch.autograd.grad(z.sum(), (mu, lv))
    for a, b in zip(g, torch.autograd.grad(ref.sum(), (m64, l64)), strict=True):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.double(), b, rtol=1e-2, atol=1e-2)


# the backends that check: the CPU kernel and the torch composite on CPU tensors (the GPU ones
# take the probabilities as they come, no device sync: see README)
@pytest.mark.parametrize(
    "backend", [b for b in grid_backends(torch.float32) if b in ("auto", "cpu", "torch")]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("bad", [1.5, -0.25, float("inf")])
def test_bce_on_probabilities_refuses_values_outside_0_1(bad, dtype, backend):
    """vae_loss(logits=False) on a recon outside [0, 1] raises torch's error (it returned NaN,
    where stock's BCE refuses: found by a fuzz); NaN still propagates."""
    if DEVICE != "cpu":
        pytest.skip("on a GPU the losses take probabilities as they come (no device sync)")
    r = torch.rand(3, 1, 33, 40, dtype=dtype, device=DEVICE)
    t = torch.rand_like(r)
    mu, lv = (
        torch.randn(3, 4, dtype=dtype, device=DEVICE),
        torch.randn(3, 4, dtype=dtype, device=DEVICE),
    )
    r[2, 0, 32, 39] = bad  # the last element: the last chunk
    with pytest.raises(RuntimeError, match="all elements of input should be between 0 and 1"):
        F.binary_cross_entropy(r, t)
    with pytest.raises(RuntimeError, match="all elements of input should be between 0 and 1"):
        genkern.ops.vae_loss(r, t, mu, lv, logits=False, backend=backend)
    r[2, 0, 32, 39] = float("nan")
    assert torch.isnan(genkern.ops.vae_loss(r, t, mu, lv, logits=False, backend=backend))


@pytest.mark.parametrize("backend", grid_backends(torch.float32))
def test_losses_promote_mixed_dtypes_as_stock(backend):
    # found by a fuzz: bfloat16 real with float32 fake logits, or a bfloat16 recon with a float32
    # target, were refused where stock's composites compute in the common dtype
    r = _logits((6,), torch.float32).bfloat16().requires_grad_()
    f = _logits((5,), torch.float32).requires_grad_()
    d = genkern.ops.discriminator_loss(r, f, backend=backend)
    r64, f64 = (t.detach().double().requires_grad_() for t in (r, f))
    ref = reference.discriminator_loss(r64, f64, "bce")
    assert d.dtype == torch.float32
    torch.testing.assert_close(d.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    for a, b in zip(torch.autograd.grad(d, (r, f)), torch.autograd.grad(ref, (r64, f64))):
        torch.testing.assert_close(a.double(), b, rtol=1e-2, atol=1e-3)
    assert torch.autograd.grad(genkern.ops.discriminator_loss(r, f), r)[0].dtype == torch.bfloat16
    recon, target, mu, lv = _vae_inputs(torch.float32)
    recon = recon.detach().bfloat16().requires_grad_()
    total = genkern.ops.vae_loss(recon, target, mu, lv, backend=backend)
    ins64 = [t.detach().double() for t in (recon, target, mu, lv)]
    assert total.dtype == torch.float32
    torch.testing.assert_close(total.double(), reference.vae_loss(*ins64), rtol=1e-5, atol=1e-4)
    assert torch.autograd.grad(total, recon)[0].dtype == torch.bfloat16


def test_compiled_vae_loss_takes_a_changing_beta_without_recompiling_each_step():
    # found by fuzz round 11b: beta reached the custom op as a float argument, which Dynamo
    # specializes: a KL warm-up compiled a graph per beta, and past the recompile limit (8) the
    # whole step ran eagerly; stock's beta * kl becomes dynamic after one recompile
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    crit = genkern.nn.VAELoss("bce", beta=0.0)
    step = torch.compile(lambda *a: crit(*a))
    r, x = _logits((4, 10), torch.float32), torch.rand(4, 10)
    mu, lv = _logits((4, 3), torch.float32), _logits((4, 3), torch.float32)
    for i in range(6):
        crit.beta = i / 11
        out = step(r, x, mu, lv)
        ref = reference.vae_loss(r, x, mu, lv, "bce", crit.beta)
        torch.testing.assert_close(out, ref)
        for a, b in zip(
            torch.autograd.grad(out, (r, mu, lv)), torch.autograd.grad(ref, (r, mu, lv))
        ):
            torch.testing.assert_close(a, b)
    assert counters["stats"]["unique_graphs"] <= 2


def test_vae_loss_beta_as_a_tensor_that_requires_grad():
    # found by fuzz round 12b: the fused total took beta as a float, dropping d loss / d beta
    r, x = _logits((4, 10), torch.float64), torch.rand(4, 10, dtype=torch.float64)
    mu, lv = _logits((4, 3), torch.float64), _logits((4, 3), torch.float64)
    for fn in (genkern.ops.vae_loss, torch.compile(genkern.ops.vae_loss, backend="eager")):
        beta = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
        ref_beta = beta.detach().clone().requires_grad_()
        out = fn(r, x, mu, lv, beta=beta, reduction="mean")
        ref = reference.vae_loss(r, x, mu, lv, beta=ref_beta, reduction="mean")
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(
            torch.autograd.grad(out, (beta, mu))[0], torch.autograd.grad(ref, (ref_beta, mu))[0]
        )


def test_compiled_vae_loss_takes_numpy_betas():
    # found by fuzz round 12b: under torch.compile(fullgraph=True) Dynamo makes a numpy scalar
    # an array, which the beta check refused ('beta must be a float, but got ndarray')
    r, x = _logits((4, 10), torch.float32), torch.rand(4, 10)
    mu, lv = _logits((4, 3), torch.float32), _logits((4, 3), torch.float32)
    for beta in (np.float64(0.7), np.float32(0.7)):
        fn = torch.compile(lambda *a: genkern.ops.vae_loss(*a, beta=beta), fullgraph=True)
        ref = reference.vae_loss(r, x, mu, lv, beta=float(beta))
        torch.testing.assert_close(fn(r, x, mu, lv), ref)


def test_vae_loss_module_keeps_a_tensor_beta_and_refuses_other_shapes():
    # found by fuzz round 13b: VAELoss stored float(beta), dropping a tensor beta's gradient
    # and any later change to it (a warm-up schedule writing it in place); a 1-D beta was
    # refused without grad and made a loss of its shape with it
    r, x = _logits((4, 10), torch.float64), torch.rand(4, 10, dtype=torch.float64)
    mu, lv = _logits((4, 3), torch.float64), _logits((4, 3), torch.float64)
    beta = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    crit = genkern.nn.VAELoss(beta=beta)
    (got,) = torch.autograd.grad(crit(r, x, mu, lv), beta)
    (want,) = torch.autograd.grad(reference.vae_loss(r, x, mu, lv, beta=beta), beta)
    torch.testing.assert_close(got, want)
    beta.data.fill_(2.0)
    torch.testing.assert_close(crit(r, x, mu, lv), reference.vae_loss(r, x, mu, lv, beta=2.0))
    for requires_grad in (False, True):
        with pytest.raises(TypeError, match="beta must be a float, but got Tensor"):
            genkern.ops.vae_loss(r, x, mu, lv, beta=torch.ones(3, requires_grad=requires_grad))
    wide = torch.tensor(0.5, dtype=torch.float64)  # float64 beta, float32 inputs: promoted
    args = [t.float().detach() for t in (r, x, mu, lv)]
    assert (
        genkern.ops.vae_loss(*args, beta=wide).dtype == reference.vae_loss(*args, beta=wide).dtype
    )
