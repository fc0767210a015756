"""Second derivatives (create_graph=True) through the fused losses and reparameterize: unrolled
GANs, consensus optimization and penalties on a loss's gradient differentiate the loss's
gradient. On every path (the C++ eager nodes, the eager autograd.Functions of the other
backends, the registered custom ops) against stock's composites in float64; gradgradcheck
through the C++ kernels; a consensus-optimization GAN step against stock's."""

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE, grid_backends

import genkern
from genkern import reference
from genkern.ops import _fused
from genkern.ops import losses as L

KINDS = ["bce", "hinge", "wgan", "lsgan"]
BACKENDS = grid_backends(torch.float64)
needs_cpu = pytest.mark.skipif("cpu" not in BACKENDS, reason="the C++ extension is not built")


def _leaf(shape, scale=2.0, low=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
    if low is not None:  # probabilities in (low, 1 - low)
        t = low + (1 - 2 * low) * torch.rand(shape, generator=gen, dtype=torch.float64)
    return t.to(DEVICE).requires_grad_()


def _second_order(fn, inputs, out_weights=(1.0,)):
    """(the first gradients, the gradients of a weighted sum of their squares): a
    consensus-optimization-like regularizer, which differentiates every first gradient."""
    out = fn(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    loss = sum(w * o for w, o in zip(out_weights, outs))
    first = torch.autograd.grad(loss, inputs, create_graph=True, allow_unused=True)
    reg = sum(
        (
            g * g * torch.linspace(0.5, 1.5, g.numel(), dtype=g.dtype, device=g.device).view_as(g)
        ).sum()
        for g in first
        if g is not None and g.requires_grad
    )
    second = (None,) * len(inputs)  # (a gradient constant in the inputs: stock's needs no grad)
    if torch.is_tensor(reg) and reg.requires_grad:
        second = torch.autograd.grad(reg, inputs, allow_unused=True)
    return [*first, *second]


def _assert_same(ours, stock, what, rtol=1e-10, atol=1e-12):
    assert len(ours) == len(stock), what
    for i, (a, b) in enumerate(zip(ours, stock)):
        if b is None:  # stock's gradient does not depend on this input: ours is 0 or None
            assert a is None or not a.any(), f"{what} #{i}"
            continue
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=f"{what} #{i}")


@pytest.mark.parametrize("fast_eager", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_gan_losses(kind, backend, fast_eager, monkeypatch):
    # fast_eager: the C++ node (cpu) or the eager autograd.Function; else the custom op
    monkeypatch.setattr(_fused, "FAST_EAGER", fast_eager)
    r, f = _leaf((5,)), _leaf((2, 1, 3, 3), seed=1)
    before = [r.detach().clone(), f.detach().clone()]
    ours = _second_order(lambda r, f: genkern.ops.discriminator_loss(r, f, kind, backend), [r, f])
    stock = _second_order(lambda r, f: reference.discriminator_loss(r, f, kind), [r, f])
    _assert_same(ours, stock, f"discriminator_loss {kind}")
    ours = _second_order(lambda f: genkern.ops.generator_loss(f, kind, backend), [f])
    stock = _second_order(lambda f: reference.generator_loss(f, kind), [f])
    _assert_same(ours, stock, f"generator_loss {kind}")
    assert torch.equal(r, before[0]) and torch.equal(f, before[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_gan_loss_custom_op_called_directly(backend):
    r, f = _leaf((4,)), _leaf((6,), seed=1)
    ours = _second_order(
        lambda r, f: torch.ops.genkern.gan_loss(r, f, 0, 1, True, True, backend)[0], [r, f]
    )
    stock = _second_order(lambda r, f: reference.discriminator_loss(r, f, "bce"), [r, f])
    _assert_same(ours, stock, "genkern::gan_loss")


@pytest.mark.parametrize("fast_eager", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("recon,logits", [("bce", True), ("bce", False), ("mse", True)])
def test_vae_loss(recon, logits, reduction, backend, fast_eager, monkeypatch):
    monkeypatch.setattr(_fused, "FAST_EAGER", fast_eager)
    x = _leaf((3, 1, 4, 4)) if logits else _leaf((3, 1, 4, 4), low=0.05)
    t, mu, lv = (
        _leaf((3, 1, 4, 4), low=0.0, seed=1),
        _leaf((3, 5), seed=2),
        _leaf((3, 5), 1, seed=3),
    )
    kw = dict(
        recon_loss=recon, beta=0.7, reduction=reduction, logits=logits, return_components=True
    )
    # through all three outputs; and through one alone (the others' gradients absent)
    for weights in ((1.3, 0.4, -0.8), (0.0, 0.0, 1.0), (0.0, 2.0, 0.0)):
        ours = _second_order(
            lambda *a: genkern.ops.vae_loss(*a, **kw, backend=backend), [x, t, mu, lv], weights
        )
        stock = _second_order(lambda *a: reference.vae_loss(*a, **kw), [x, t, mu, lv], weights)
        _assert_same(ours, stock, f"vae_loss {recon} logits={logits} {reduction} {weights}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_reparameterize_eps_given(backend):
    mu, lv, eps = _leaf((4, 3)), _leaf((4, 3), 1, seed=1), _leaf((4, 3), 1, seed=2)
    w = torch.linspace(-1, 1, 12, dtype=torch.float64, device=DEVICE).view(4, 3)
    for wanted in ([mu, lv, eps], [lv], [eps], [mu, lv]):
        # frozen inputs: eps and mu as plain tensors where they are not wanted
        args = [a if any(a is b for b in wanted) else a.detach() for a in (mu, lv, eps)]

        def run(fn):
            def loss(*w_args):
                it = iter(w_args)
                full = [next(it) if a.requires_grad else a for a in args]
                return (fn(*full) * w).sum()

            return _second_order(loss, [a for a in args if a.requires_grad])

        ours = run(lambda m, v, e: genkern.ops.reparameterize(m, v, e, backend=backend))
        stock = run(lambda m, v, e: m + e * torch.exp(0.5 * v))
        _assert_same(ours, stock, f"reparameterize {len(wanted)} wanted")


@pytest.mark.parametrize("backend", BACKENDS)
def test_reparameterize_eps_drawn(backend):
    # the cpu path draws eps inside its kernel: the second derivative treats it as a constant
    mu, lv = _leaf((64, 8)), _leaf((64, 8), 1, seed=1)
    w = torch.linspace(-1, 1, 512, dtype=torch.float64, device=DEVICE).view(64, 8)
    gen = torch.Generator(device=DEVICE)

    def ours(m, v):
        return (
            genkern.ops.reparameterize(m, v, generator=gen.manual_seed(5), backend=backend) * w
        ).sum()

    with torch.no_grad():
        z = genkern.ops.reparameterize(mu, lv, generator=gen.manual_seed(5), backend=backend)
        eps = (z - mu) * torch.exp(-0.5 * lv)  # the draws, recovered (to ~1e-15)
    got = _second_order(ours, [mu, lv])
    want = _second_order(lambda m, v: ((m + eps * torch.exp(0.5 * v)) * w).sum(), [mu, lv])
    _assert_same(got, want, "reparameterize, eps drawn", 1e-12, 1e-13)


@needs_cpu
@pytest.mark.parametrize("fast_eager", [True, False])
def test_gradgradcheck_through_the_cpu_kernels(fast_eager, monkeypatch):
    monkeypatch.setattr(_fused, "FAST_EAGER", fast_eager)
    gradgradcheck = torch.autograd.gradgradcheck
    r, f = _leaf((3,)).cpu(), _leaf((2, 2), seed=1).cpu()
    for kind in KINDS:
        assert gradgradcheck(lambda r, f: genkern.ops.discriminator_loss(r, f, kind, "cpu"), (r, f))
        assert gradgradcheck(lambda f: genkern.ops.generator_loss(f, kind, "cpu"), (f,))
    for recon, logits in (("bce", True), ("bce", False), ("mse", True)):
        x = (_leaf((2, 3)) if logits else _leaf((2, 3), low=0.1)).cpu()
        t, mu, lv = (
            _leaf(s, 1, low, seed).cpu()
            for s, low, seed in (((2, 3), 0.0, 1), ((2, 2), None, 2), ((2, 2), None, 3))
        )

        def vae(*a):
            return genkern.ops.vae_loss(
                *a, recon_loss=recon, beta=0.3, logits=logits, return_components=True, backend="cpu"
            )

        assert gradgradcheck(vae, (x, t, mu, lv))
    mu, lv, eps = (_leaf((2, 3), 1, seed=s).cpu() for s in range(3))
    assert gradgradcheck(
        lambda m, v, e: genkern.ops.reparameterize(m, v, e, backend="cpu"), (mu, lv, eps)
    )
    gen = torch.Generator()
    assert gradgradcheck(
        lambda m, v: genkern.ops.reparameterize(m, v, generator=gen.manual_seed(1), backend="cpu"),
        (mu, lv),
    )


@pytest.mark.parametrize("fast_eager", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_logits_changed_in_place_refuse_the_second_derivative(backend, fast_eager, monkeypatch):
    # the composite reads the logits: changed since the forward, the backward refuses as stock's
    # does; the first derivative (the forward's gradients) still runs
    monkeypatch.setattr(_fused, "FAST_EAGER", fast_eager)
    for make in (lambda x: genkern.ops.generator_loss(x, "bce", backend),):
        x = _leaf((6,))
        y = x * 1.0
        loss = make(y)
        with torch.no_grad():
            y.add_(1.0)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            torch.autograd.grad(loss, x, create_graph=True)
        y = x * 1.0
        loss = make(y)
        with torch.no_grad():
            y.add_(1.0)
        (g,) = torch.autograd.grad(loss, x)
        torch.testing.assert_close(g, -torch.sigmoid(-x.detach()) / 6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hooks_on_the_logits_fire_once(backend):
    x = _leaf((5,))
    y = x * 2.0
    seen = []
    y.register_hook(lambda g: seen.append(g.detach().clone()))
    (g,) = torch.autograd.grad(genkern.ops.generator_loss(y, "bce", backend), y, create_graph=True)
    assert len(seen) == 1 and g.requires_grad
    torch.testing.assert_close(seen[0], -torch.sigmoid(-y.detach()) / 5)


def test_autocast_second_derivative():
    # stock's binary_cross_entropy refuses autocast; the composite runs outside it, in float32
    dev_type = "cuda" if DEVICE.startswith("cuda") else "cpu"
    x = (torch.rand(4, 6, device=DEVICE) * 0.8 + 0.1).requires_grad_()
    t = torch.rand(4, 6, device=DEVICE)
    mu, lv = torch.randn(4, 2, device=DEVICE), torch.randn(4, 2, device=DEVICE)
    with torch.autocast(dev_type, dtype=torch.bfloat16):
        loss = genkern.ops.vae_loss(x, t, mu, lv, logits=False)
        (g,) = torch.autograd.grad(loss, x, create_graph=True)
        (h,) = torch.autograd.grad(g.sum(), x)
    # d/dx of BCE's derivative (x - t) / (x (1 - x)), summed: (x^2 - 2tx + t) / (x (1 - x))^2
    xd = x.detach()
    want = (xd * xd - 2 * t * xd + t) / (xd * (1 - xd)) ** 2
    torch.testing.assert_close(h, want, rtol=1e-4, atol=1e-4)


def test_consensus_optimization_step_like_stock():
    # Mescheder et al. 2017: each player's step follows its loss's gradient plus the gradient of
    # gamma / 2 times the squared norm of both players' gradients (second derivatives of both
    # losses, through the models); genkern's losses against stock's composites, float64
    def train(d_loss, g_loss, steps=3):
        torch.manual_seed(0)
        G = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 6))
        D = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        G, D = G.to(DEVICE).double(), D.to(DEVICE).double()
        params = [*G.parameters(), *D.parameters()]
        opt = torch.optim.SGD(params, lr=0.05)
        gen = torch.Generator().manual_seed(1)
        for _ in range(steps):
            real = torch.randn(8, 6, generator=gen, dtype=torch.float64).to(DEVICE) + 1
            z = torch.randn(8, 4, generator=gen, dtype=torch.float64).to(DEVICE)
            fake = G(z)
            ld, lg = d_loss(D(real), D(fake)), g_loss(D(fake))
            gd = torch.autograd.grad(ld, list(D.parameters()), create_graph=True)
            gg = torch.autograd.grad(lg, list(G.parameters()), create_graph=True)
            reg = 0.5 * sum((g * g).sum() for g in (*gd, *gg))
            hd = torch.autograd.grad(reg, params)
            opt.zero_grad()
            for p, g, h in zip(params, (*gg, *gd), (*hd[: len(gg)], *hd[len(gg) :])):
                p.grad = (g + 10.0 * h).detach()
            opt.step()
        return [p.detach() for p in params]

    def stock_d(r, f):
        return F.binary_cross_entropy_with_logits(
            r, torch.ones_like(r)
        ) + F.binary_cross_entropy_with_logits(f, torch.zeros_like(f))

    stock = train(stock_d, lambda f: F.binary_cross_entropy_with_logits(f, torch.ones_like(f)))
    loss = genkern.nn.GANLoss("bce")
    ours = train(loss.discriminator, loss.generator)
    for a, b in zip(ours, stock):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_the_composites_are_the_torch_backends_values():
    # one place for each term's value: the torch backend's forward reads the composite's
    x = torch.linspace(-30, 30, 61, dtype=torch.float64)
    for term in range(8):
        value, _ = L._term_torch(x, term)
        assert torch.equal(value, L._term_value_torch(x, term))


# ---- found by the fuzz of this feature ---------------------------------------------------------


@pytest.mark.parametrize("fast_eager", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_vae_outputs_constant_in_the_wanted_inputs(backend, fast_eager, monkeypatch):
    # only recon needs a gradient: kl, which gets one (through total, a tensor beta, or a sum of
    # the components), is constant in it; autograd.grad refused such an output
    monkeypatch.setattr(_fused, "FAST_EAGER", fast_eager)
    x, t = _leaf((2, 6)), _leaf((2, 6), low=0.0, seed=1).detach()
    mu, lv = _leaf((2, 3), seed=2).detach(), _leaf((2, 3), 1, seed=3).detach()
    runs = {
        "float beta": lambda fn: fn(x, t, mu, lv, beta=0.7),
        "tensor beta": lambda fn: fn(x, t, mu, lv, beta=torch.tensor(0.7, dtype=x.dtype)),
        "components": lambda fn: (lambda o: o[1] + 0.5 * o[2])(
            fn(x, t, mu, lv, return_components=True)
        ),
    }
    for what, run in runs.items():
        ours = _second_order(
            lambda x: run(lambda *a, **k: genkern.ops.vae_loss(*a, **k, backend=backend)), [x]
        )
        stock = _second_order(lambda x: run(reference.vae_loss), [x])
        _assert_same(ours, stock, what)


@pytest.mark.parametrize("fast_eager", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_vae_inputs_no_output_reached_get_no_gradient(backend, fast_eager, monkeypatch):
    # a backward through the recon term alone leaves mu's and logvar's .grad None, as stock's
    # (zeros moved them under weight decay)
    monkeypatch.setattr(_fused, "FAST_EAGER", fast_eager)
    x, t, mu, lv = (
        _leaf((2, 6)),
        _leaf((2, 6), low=0.0, seed=1),
        _leaf((2, 3), seed=2),
        _leaf((2, 3), seed=3),
    )
    _, rec, kl = genkern.ops.vae_loss(x, t, mu, lv, return_components=True, backend=backend)
    rec.backward(create_graph=True)
    assert mu.grad is None and lv.grad is None and x.grad is not None and t.grad is not None
    x.grad = t.grad = None
    kl.backward(create_graph=True)
    assert x.grad is None and t.grad is None and mu.grad is not None and lv.grad is not None


@pytest.mark.parametrize("backend", BACKENDS)
def test_reparameterize_eps_drawn_infinite_logvar(backend):
    # d z / d logvar at logvar = +-inf, with create_graph=True: the first-order gradient's
    # +-inf and 0, not NaN (inf - inf)
    mu = torch.zeros(4, dtype=torch.float64, device=DEVICE, requires_grad=True)
    inf = float("inf")
    lv = torch.tensor([inf, inf, -inf, 0.5], dtype=torch.float64, device=DEVICE, requires_grad=True)
    gen = torch.Generator(device=DEVICE)
    grads = []
    for create_graph in (False, True):
        z = genkern.ops.reparameterize(mu, lv, generator=gen.manual_seed(3), backend=backend)
        grads.append(torch.autograd.grad(z.sum(), lv, create_graph=create_graph)[0].detach())
    assert not grads[1].isnan().any()
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-15, atol=0)


@pytest.mark.parametrize("fast_eager", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_second_backward_through_a_freed_graph_says_so(backend, fast_eager, monkeypatch):
    monkeypatch.setattr(_fused, "FAST_EAGER", fast_eager)
    f = _leaf((6,))
    inputs = [
        _leaf((2, 6)),
        _leaf((2, 6), low=0.0, seed=1),
        _leaf((2, 3), seed=2),
        _leaf((2, 3), seed=3),
    ]
    for loss in (
        genkern.ops.generator_loss(f, "bce", backend),
        genkern.ops.vae_loss(*inputs, backend=backend),
    ):
        loss.backward()
        with pytest.raises(RuntimeError, match="backward through the graph a second time"):
            loss.backward(create_graph=True)


@pytest.mark.parametrize("fast_eager", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which,kind", [("D", "wgan"), ("G", "wgan"), ("G", "hinge")])
def test_mean_losses_need_nothing_of_their_forward(which, kind, backend, fast_eager, monkeypatch):
    # wgan's losses and the hinge generator's are multiples of means, whose backward needs nothing
    # of the forward (stock's -f.mean()): a second backward runs without retain_graph, and logits
    # changed in place after the forward change no derivative, as in stock (both refused before)
    monkeypatch.setattr(_fused, "FAST_EAGER", fast_eager)
    ops = {"D": (genkern.ops.discriminator_loss, reference.discriminator_loss)}
    ops["G"] = (
        lambda r, f, kind, *b: genkern.ops.generator_loss(f, kind, *b),
        lambda r, f, kind: reference.generator_loss(f, kind),
    )
    grads = []
    for loss_of in (
        lambda r, f: ops[which][0](r, f, kind, backend),
        lambda r, f: ops[which][1](r, f, kind),
    ):
        r, f = _leaf((5,)), _leaf((2, 1, 3, 3), seed=1)
        rr, ff = r.clone(), f.clone()
        loss = loss_of(rr, ff)
        with torch.no_grad():
            rr.add_(1.0)
            ff.mul_(3.0)
        loss.backward()
        loss.backward(create_graph=True)
        grads.append([r.grad, f.grad])
    ours, stock = grads
    _assert_same(ours, stock, f"{which} {kind}", rtol=0, atol=0)
    assert ours[1] is not None and ours[1].is_contiguous() and not ours[1].requires_grad


@needs_cpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mean_losses_gradients_are_stocks_bits(dtype):
    # (-g) / n, as stock's NegBackward then MeanBackward, in the logits' dtype and layout
    f = (torch.randn(7, 3, generator=torch.Generator().manual_seed(0)) * 2).to(dtype)
    f = f.t().requires_grad_()
    g = torch.tensor(0.37)
    for backend in ("cpu", "torch"):
        (ours,) = torch.autograd.grad(genkern.ops.generator_loss(f, "wgan", backend), f, g)
        (stock,) = torch.autograd.grad(-f.float().mean(), f, g)
        assert ours.dtype == dtype and ours.is_contiguous() and torch.equal(ours, stock), backend


@pytest.mark.parametrize("imag", [0.5, 1.0])
@pytest.mark.parametrize("kind", ["bce", "wgan", "hinge"])
def test_negative_view_output_gradients(kind, imag):
    # g = conj().imag of a complex g: a negative view, whose memory holds -g; the C++ nodes read
    # the memory (found by a fuzz: the gradients' signs flipped; a -1 counted as loss.backward()'s
    # 1)
    f, r = _leaf((6,)).float(), _leaf((5,), seed=1).float()
    g = torch.tensor(0.3 + imag * 1j).conj().imag
    assert g.is_neg()
    for ours, stock, inputs in (
        (
            lambda: genkern.ops.generator_loss(f, kind),
            lambda: reference.generator_loss(f, kind),
            [f],
        ),
        (
            lambda: genkern.ops.discriminator_loss(r, f, kind),
            lambda: reference.discriminator_loss(r, f, kind),
            [r, f],
        ),
    ):
        got = torch.autograd.grad(ours(), inputs, g)
        want = torch.autograd.grad(stock(), inputs, g)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
