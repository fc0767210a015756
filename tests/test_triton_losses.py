"""The Triton GAN/VAE loss kernels (under TRITON_INTERPRET=1 on CPU): tiny shapes."""

import math

import pytest
import torch
from _helpers import assert_unchanged, clones
from conftest import DEVICE, device_backends

import genkern
from genkern import reference, testing
from genkern.ops import losses as L

pytestmark = pytest.mark.skipif(
    "triton" not in device_backends(torch.float32),
    reason="the triton backend is not available here (no triton, or no GPU and no interpreter)",
)


def _t(shape, dtype=torch.float32, low=-3.0, high=3.0, grad=True):
    return testing.make_tensor(shape, dtype, DEVICE, "contiguous", grad, low, high)


@pytest.mark.parametrize("kind", L.GAN_KINDS)
def test_gan_losses(kind):
    r, f = _t((3, 1, 5, 7)), _t((1030,))  # a partial block, and more than one block
    before = clones([r, f])
    testing.check_against_reference(
        lambda r, f: genkern.ops.discriminator_loss(r, f, kind, backend="triton"),
        lambda r, f: reference.discriminator_loss(r, f, kind),
        [r, f],
        torch.float32,
        "triton D",
    )
    testing.check_against_reference(
        lambda f: genkern.ops.generator_loss(f, kind, backend="triton"),
        lambda f: reference.generator_loss(f, kind),
        [f],
        torch.float32,
        "triton G",
    )
    assert_unchanged(before, [r, f])


@pytest.mark.parametrize("recon,logits", [("bce", True), ("bce", False), ("mse", True)])
def test_vae_loss(recon, logits):
    x = _t((2, 1, 6, 5)) if logits else _t((2, 1, 6, 5), low=0.02, high=0.98)
    t, mu, lv = _t((2, 1, 6, 5), low=0, high=1), _t((2, 3)), _t((2, 3), low=-2, high=2)
    inputs = [x, t, mu, lv]
    before = clones(inputs)
    kw = dict(recon_loss=recon, beta=0.5, reduction="mean", logits=logits)
    testing.check_against_reference(
        lambda *a: genkern.ops.vae_loss(*a, **kw, backend="triton"),
        lambda *a: reference.vae_loss(*a, **kw),
        inputs,
        torch.float32,
        "triton vae",
    )
    total, rec, kl = genkern.ops.vae_loss(*inputs, **kw, return_components=True, backend="triton")
    ref = reference.vae_loss(*[v.detach().double() for v in inputs], **kw, return_components=True)
    for a, b in zip((total, rec, kl), ref, strict=True):
        testing.assert_close_to_reference(a, b, torch.float32)
    assert_unchanged(before, inputs)


def test_reparameterize():
    mu, lv, eps = _t((3, 4)), _t((3, 4)), _t((3, 4))
    testing.check_against_reference(
        lambda m, v, e: genkern.ops.reparameterize(m, v, e, backend="triton"),
        reference.reparameterize,
        [mu, lv, eps],
        torch.float32,
        "triton reparameterize",
    )


def test_extremes_and_half():
    inf = math.inf
    r = torch.tensor([inf, 1e4, -1e4], device=DEVICE, requires_grad=True)
    f = torch.tensor([-inf, -1e4, 1e4], device=DEVICE, requires_grad=True)
    d = genkern.ops.discriminator_loss(r, f, "bce", backend="triton")
    torch.testing.assert_close(d.item(), 2e4 / 3, rtol=1e-5, atol=1e-3)
    gr, gf = torch.autograd.grad(d, (r, f))
    assert torch.isfinite(gr).all() and torch.isfinite(gf).all()
    nan = torch.tensor([math.nan], device=DEVICE)
    assert torch.isnan(genkern.ops.generator_loss(nan, "bce", backend="triton"))
    h = _t((40,), torch.float16)
    g = genkern.ops.generator_loss(h, "bce", backend="triton")
    assert g.dtype == torch.float32
    ref = reference.generator_loss(h.detach().double(), "bce")
    torch.testing.assert_close(g.double(), ref, rtol=1e-5, atol=1e-6)
    (gh,) = torch.autograd.grad(g, (h,))
    assert gh.dtype == torch.float16


def test_deterministic():
    r = _t((5000,), grad=False)
    a = genkern.ops.discriminator_loss(r, r, "hinge", backend="triton")
    b = genkern.ops.discriminator_loss(r, r, "hinge", backend="triton")
    assert torch.equal(a, b)


@pytest.mark.parametrize("fast_eager", [True, False])
def test_second_derivatives(fast_eager, monkeypatch):
    # create_graph=True: the backward differentiates stock's composite of the loss (the eager
    # autograd.Function's and the custom op's), in float32
    from genkern.ops import _fused

    monkeypatch.setattr(_fused, "FAST_EAGER", fast_eager)
    r, f = _t((5,)), _t((3, 4))
    x, t = _t((2, 6), low=0.05, high=0.95), _t((2, 6), low=0, high=1, grad=False)
    mu, lv = _t((2, 3)), _t((2, 3), low=-2, high=2)

    def second(loss, inputs):
        first = torch.autograd.grad(loss, inputs, create_graph=True)
        return torch.autograd.grad(sum((g * g).sum() for g in first), inputs)

    cases = [
        (lambda k: genkern.ops.discriminator_loss(r, f, "bce", backend=k), [r, f]),
        (lambda k: genkern.ops.generator_loss(f, "lsgan", backend=k), [f]),
        (lambda k: genkern.ops.vae_loss(x, t, mu, lv, logits=False, backend=k), [x, mu, lv]),
    ]
    for loss, inputs in cases:
        got, want = second(loss("triton"), inputs), second(loss("torch"), inputs)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
