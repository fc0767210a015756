"""Second derivatives through conv2d, conv_transpose2d, linear, batch_norm, the pools and
upsample_nearest2d (a backward with create_graph=True, as a WGAN-GP gradient penalty takes): the
gradients are then stock's composite recomputed from the saved inputs (the linear maps, max
pooling given its indices among them: at a zero input; an input kept only as a value, a batch
norm's recovered from its output or a conv's recomputed, placed where it was in the graph) and
differentiated by autograd, on every path (the C++ eager path, the custom op with the cpu
backend's registered backward, the torch backend). Compared with stock in float64."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import needs_cpu_backend

import genkern
import genkern.models
from genkern import backends, reference
from genkern.ops import _fused

SLOPE = 0.2
ACTS = [None, "relu", "leaky_relu", "tanh", "sigmoid", "silu"]

# name: (genkern op, stock op, x, weight and bias sizes)
OPS = {
    "conv2d": (
        lambda x, w, b, **k: genkern.ops.conv2d(x, w, b, 2, 1, **k),
        lambda x, w, b: F.conv2d(x, w, b, 2, 1),
        (3, 4, 8, 7),
        (5, 4, 4, 4),
    ),
    "conv_transpose2d": (
        lambda x, w, b, **k: genkern.ops.conv_transpose2d(x, w, b, 2, 1, 1, **k),
        lambda x, w, b: F.conv_transpose2d(x, w, b, 2, 1, 1),
        (3, 4, 5, 4),
        (4, 5, 4, 4),
    ),
    "linear": (
        lambda x, w, b, **k: genkern.ops.linear(x, w, b, **k),
        lambda x, w, b: F.linear(x, w, b),
        (6, 7),
        (5, 7),
    ),
}
# the C++ eager path (cpu backend, fast paths on), the custom op (cpu backend, fast paths off),
# the torch backend's eager path (linear's autograd.Function) and its custom op
PATHS = [("cpu", True), ("cpu", False), ("torch", True), ("torch", False)]
PATH_IDS = ["cpp_eager", "custom_op", "torch_eager", "torch"]


def _use_path(path, monkeypatch):
    backend, fast = path
    if backend not in backends.available_backends("cpu", torch.float64):
        pytest.skip(f"the {backend} backend is not available here")
    monkeypatch.setattr(_fused, "FAST_EAGER", fast)
    return backend


def _inputs(name, dtype, weight_grad=True, tiny=False):
    _, _, xs, ws = OPS[name]
    if tiny:  # gradgradcheck's numerical Jacobians grow with the square of the sizes
        xs, ws = ((2, 2, 3, 3), (2, 2, *ws[2:])) if len(ws) == 4 else ((3, 4), (2, 4))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(xs, generator=g, dtype=dtype).requires_grad_()
    w = torch.randn(ws, generator=g, dtype=dtype).requires_grad_(weight_grad)
    b = torch.randn(ws[1] if name == "conv_transpose2d" else ws[0], generator=g, dtype=dtype)
    return x, w, b.requires_grad_()


def _penalized(forward, x, w, b):
    """A gradient penalty's pattern: first-order gradients with create_graph=True, a penalty of
    them, its backward. Returns those gradients and the penalty's."""
    x, w, b = (t.detach().clone().requires_grad_(t.requires_grad) for t in (x, w, b))
    y = forward(x, w, b)
    v = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
    wanted = [t for t in (x, w) if t.requires_grad]
    first = torch.autograd.grad((y * v).sum(), wanted, create_graph=True)
    penalty = sum(g.pow(3).sum() for g in first)
    if penalty.requires_grad:  # not where the gradients are constants (linear maps, no weight's)
        penalty.backward()
    return [*first, x.grad, w.grad, b.grad]


def _assert_close(got, want, **tol):
    assert len(got) == len(want)
    for a, c in zip(got, want):
        assert (a is None) == (c is None)
        if a is not None:
            torch.testing.assert_close(a, c, **tol)


@pytest.mark.parametrize("weight_grad", [True, False], ids=["weight_grad", "frozen_weight"])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("name", list(OPS))
def test_second_derivative_matches_stock(name, path, act, weight_grad, monkeypatch):
    backend = _use_path(path, monkeypatch)
    op, stock, _, _ = OPS[name]
    x, w, b = _inputs(name, torch.float64, weight_grad)
    got = _penalized(
        lambda x, w, b: op(x, w, b, activation=act, negative_slope=SLOPE, backend=backend), x, w, b
    )
    want = _penalized(lambda x, w, b: reference.activation(stock(x, w, b), act, SLOPE), x, w, b)
    _assert_close(got, want, rtol=1e-12, atol=1e-12)
    if act in ("tanh", "silu"):  # a nonzero second derivative of the activation reaches x
        assert got[-3].abs().sum() > 0


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("name", list(OPS))
def test_gradgradcheck(name, path, monkeypatch):
    backend = _use_path(path, monkeypatch)
    op = OPS[name][0]
    x, w, b = _inputs(name, torch.float64, tiny=True)
    f = lambda x, w, b: op(x, w, b, activation="silu", backend=backend)  # silu'' is not 0
    assert torch.autograd.gradgradcheck(f, (x, w, b))


@needs_cpu_backend
@pytest.mark.parametrize("name", list(OPS))
def test_second_derivative_in_bfloat16_is_stocks(name):
    # the recomputation is stock's composite itself: the same bits
    op, stock, _, _ = OPS[name]
    x, w, b = _inputs(name, torch.bfloat16)
    got = _penalized(lambda x, w, b: op(x, w, b, activation="tanh", backend="cpu"), x, w, b)
    want = _penalized(lambda x, w, b: torch.tanh(stock(x, w, b)), x, w, b)
    _assert_close(got, want, rtol=0, atol=0)


# name: (genkern op, stock op); a pool or upsampling between a tanh and a conv, so that the
# second derivative passes through it both ways
LINEAR_MAPS = {
    "avg_pool2d": (
        lambda x, **k: genkern.ops.avg_pool2d(x, 2, **k),
        lambda x: F.avg_pool2d(x, 2),
    ),
    "avg_pool2d_ceil_padded": (
        lambda x, **k: genkern.ops.avg_pool2d(x, 3, 2, 1, True, False, 5, **k),
        lambda x: F.avg_pool2d(x, 3, 2, 1, True, False, 5),
    ),
    "upsample_scale": (
        lambda x, **k: genkern.ops.upsample_nearest2d(x, scale_factor=2, **k),
        lambda x: F.interpolate(x, scale_factor=2, mode="nearest"),
    ),
    "upsample_size": (
        lambda x, **k: genkern.ops.upsample_nearest2d(x, size=(11, 13), **k),
        lambda x: F.interpolate(x, size=(11, 13), mode="nearest"),
    ),
}


MAX_POOLS = {
    "2x2": dict(kernel_size=2),  # channels_last: the C++ path's tap codes
    "3x3_s2_p1": dict(kernel_size=3, stride=2, padding=1),
    "ceil": dict(kernel_size=2, stride=2, ceil_mode=True),
    "k2_s3": dict(kernel_size=2, stride=3),
    "dilated": dict(kernel_size=2, stride=1, padding=1, dilation=2),
}
for _name, _kw in MAX_POOLS.items():  # every activation on one geometry
    for _act in (
        (None, "relu", "leaky_relu", "tanh", "silu") if _name == "2x2" else ("relu", "silu")
    ):
        LINEAR_MAPS[f"max_pool2d_{_name}_{_act}"] = (
            lambda x, _kw=_kw, _act=_act, **k: genkern.ops.max_pool2d(
                x, activation=_act, negative_slope=SLOPE, **_kw, **k
            ),
            lambda x, _kw=_kw, _act=_act: reference.activation(F.max_pool2d(x, **_kw), _act, SLOPE),
        )


def _through(pool, x, w):
    return pool(torch.tanh(F.conv2d(x, w, padding=1)))


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("name", list(LINEAR_MAPS))
def test_second_derivative_through_linear_maps_matches_stock(name, path, layout, monkeypatch):
    backend = _use_path(path, monkeypatch)
    op, stock = LINEAR_MAPS[name]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 9, generator=g, dtype=torch.float64)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    x, w = x.requires_grad_(), torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64)
    w, b = w.requires_grad_(), torch.zeros(1, dtype=torch.float64)  # b: unused
    got = _penalized(lambda x, w, b: _through(lambda h: op(h, backend=backend), x, w), x, w, b)
    want = _penalized(lambda x, w, b: _through(stock, x, w), x, w, b)
    _assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("name", [n for n in LINEAR_MAPS if "max_pool" not in n or "3x3" in n])
def test_gradgradcheck_linear_maps(name, path, monkeypatch):
    backend = _use_path(path, monkeypatch)
    op = LINEAR_MAPS[name][0]
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x: op(torch.tanh(x), backend=backend), (x,))


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
def test_gradgradcheck_max_pool_with_silu(path, layout, monkeypatch):
    # silu's second derivative reads the pooled input, which the pool keeps as a value only: it
    # is put back in x's graph (this raised "not implemented" before); channels_last 2x2: the C++
    # path's tap codes
    backend = _use_path(path, monkeypatch)
    x = torch.randn(1, 2, 4, 6, dtype=torch.float64)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    for kw in (dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1)):

        def pool(x, kw=kw):
            return genkern.ops.max_pool2d(x, activation="silu", backend=backend, **kw)

        assert torch.autograd.gradgradcheck(pool, (x,))


BATCHED = {  # name: (genkern's, stock's) on an input of 2x3x6x6
    "conv2d": (
        lambda x: genkern.ops.conv2d(x, _W, None, 1, 1, activation="leaky_relu"),
        lambda x: F.leaky_relu(F.conv2d(x, _W, None, 1, 1)),
    ),
    "conv_transpose2d": (
        lambda x: genkern.ops.conv_transpose2d(x, _W.transpose(0, 1), None, 2, 1, 1),
        lambda x: F.conv_transpose2d(x, _W.transpose(0, 1), None, 2, 1, 1),
    ),
    "linear": (
        lambda x: genkern.ops.linear(x.flatten(1), _W.reshape(-1, 108), activation="tanh"),
        lambda x: torch.tanh(F.linear(x.flatten(1), _W.reshape(-1, 108))),
    ),
    "max_pool2d": (lambda x: genkern.ops.max_pool2d(x, 2), lambda x: F.max_pool2d(x, 2)),
    "max_pool2d_silu": (  # (found by a fuzz: silu's derivative was dropped on the C++ path)
        lambda x: genkern.ops.max_pool2d(x, 3, 2, activation="silu"),
        lambda x: F.silu(F.max_pool2d(x, 3, 2)),
    ),
    "avg_pool2d": (lambda x: genkern.ops.avg_pool2d(x, 2), lambda x: F.avg_pool2d(x, 2)),
    "upsample_nearest2d": (
        lambda x: genkern.ops.upsample_nearest2d(x, scale_factor=2),
        lambda x: F.interpolate(x, scale_factor=2),
    ),
    "discriminator_loss": (
        lambda x: genkern.ops.discriminator_loss(x[0], x[1]),
        lambda x: F.softplus(-x[0]).mean() + F.softplus(x[1]).mean(),
    ),
    "vae_loss": (
        lambda x: genkern.ops.vae_loss(x[0], x[1].sigmoid(), x[0, 0], x[1, 0]),
        lambda x: reference.vae_loss(x[0], x[1].sigmoid(), x[0, 0], x[1, 0]),
    ),
}
_W = torch.randn(4, 3, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
_BN_W = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)  # (the cpu paths keep y, not x)
_BN_B = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
BATCHED |= {  # the cpu batch norm refused (found by a fuzz: it ran its kernel on the gradient)
    "batch_norm_leaky_relu": (
        lambda x: genkern.ops.batch_norm(
            x, None, None, _BN_W, _BN_B, True, activation="leaky_relu", negative_slope=0.2
        ),
        lambda x: F.leaky_relu(F.batch_norm(x, None, None, _BN_W, _BN_B, True), 0.2),
    ),
    "batch_norm_eval_tanh": (
        lambda x: genkern.ops.batch_norm(x, _BN_B, _BN_W, _BN_W, _BN_B, activation="tanh"),
        lambda x: torch.tanh(F.batch_norm(x, _BN_B, _BN_W, _BN_W, _BN_B)),
    ),
}


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("name", list(BATCHED))
def test_batched_gradients_match_stock(name, path, monkeypatch):
    # found by a fuzz: autograd.grad(is_grads_batched=True) and jacobian(vectorize=True) (rows
    # of a Jacobian: per-class saliency maps) raised "Cannot access storage of BatchedTensorImpl";
    # a later one: the torch backend's losses read the batched gradient's value (item())
    backend = _use_path(path, monkeypatch)
    ours, stock = BATCHED[name]
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    jacobians = []
    with genkern.use_backend(backend):
        rows = torch.autograd.functional.jacobian(ours, x.detach(), vectorize=True)
    want = torch.autograd.functional.jacobian(stock, x.detach(), vectorize=True)
    torch.testing.assert_close(rows, want, rtol=1e-12, atol=1e-12)
    for f in (ours, stock):
        with genkern.use_backend(backend):
            y = f(x)
        v = torch.randn(3, *y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(3))
        jacobians.append(torch.autograd.grad(y, x, v, is_grads_batched=True)[0])
    torch.testing.assert_close(jacobians[0], jacobians[1], rtol=1e-12, atol=1e-12)


def _critic():
    return nn.Sequential(
        nn.Conv2d(3, 8, 4, 2, 1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(8, 16, 4, 2, 1),
        nn.LeakyReLU(0.2),
        nn.Flatten(),
        nn.Linear(16 * 2 * 2, 1),
    ).double()


def _wgan_gp_steps(critic, steps=3):
    """A WGAN-GP critic's training steps (Gulrajani et al. 2017): the losses and the weights."""
    opt = torch.optim.Adam(critic.parameters(), 1e-3, betas=(0.5, 0.9))
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        real = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
        fake = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
        alpha = torch.rand(4, 1, 1, 1, generator=g, dtype=torch.float64)
        x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_()
        (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
        penalty = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
        loss = critic(fake).mean() - critic(real).mean() + 10 * penalty
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses), [p.detach() for p in critic.parameters()]


def test_wgan_gp_critic_trains_as_stock():
    stock = _critic()
    ours = genkern.nn.convert(copy.deepcopy(stock))
    assert isinstance(ours[0], genkern.nn.Conv2d) and isinstance(ours[5], genkern.nn.Linear)
    want, got = _wgan_gp_steps(stock), _wgan_gp_steps(ours)
    torch.testing.assert_close(got[0], want[0], rtol=1e-10, atol=1e-12)
    _assert_close(got[1], want[1], rtol=1e-10, atol=1e-12)


def _batch_norm_inputs(affine, leaf=True):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    # |weight| >= 0.1: the cpu paths keep leaky_relu's output, not x (batch_norm_keeps_output)
    w = (torch.rand(4, generator=g, dtype=torch.float64) + 0.5).requires_grad_(affine)
    b = torch.randn(4, generator=g, dtype=torch.float64).requires_grad_(affine)
    return x, w, b


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no_affine"])
@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
def test_batch_norm_second_derivative_matches_stock(path, act, training, affine, monkeypatch):
    # a DCGAN discriminator's R1 or WGAN-GP penalty: batch norm raised (not implemented); a
    # leaky_relu's batch norm keeps y in x's place, and x comes back from it into x's place in
    # the graph (eval without an affine map nor activation: the gradient is constant, as stock's)
    backend = _use_path(path, monkeypatch)
    rm, rv = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.5
    x, w, b = _batch_norm_inputs(affine)
    wb = (lambda w, b: (w, b)) if affine else (lambda w, b: (None, None))

    def ours(x, w, b):
        return genkern.ops.batch_norm(
            x, rm.clone(), rv.clone(), *wb(w, b), training, activation=act,
            negative_slope=SLOPE, backend=backend,
        )  # fmt: skip

    def stock(x, w, b):
        y = F.batch_norm(x, rm.clone(), rv.clone(), *wb(w, b), training)
        return reference.activation(y, act, SLOPE)

    _assert_close(_penalized(ours, x, w, b), _penalized(stock, x, w, b), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("act", ["leaky_relu", "silu"])
@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
def test_gradgradcheck_batch_norm(path, act, monkeypatch):
    backend = _use_path(path, monkeypatch)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.tensor([0.7, -1.3], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([0.2, -0.1], dtype=torch.float64, requires_grad=True)
    f = lambda x, w, b: genkern.ops.batch_norm(  # noqa: E731
        x, None, None, w, b, True, activation=act, negative_slope=SLOPE, backend=backend
    )
    assert torch.autograd.gradgradcheck(f, (x, w, b))


@pytest.mark.parametrize("transposed", [False, True], ids=["conv2d", "conv_transpose2d"])
@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
def test_conv_after_a_batch_norm_second_derivative_matches_stock(path, transposed, monkeypatch):
    # the C++ path's conv keeps the batch norm's input instead of its own (a DCGAN generator's BN
    # + ReLU output) and recomputes it: it raised; the recomputed input is placed where the
    # batch norm's output was in the graph, so the second derivative reaches the batch norm
    backend = _use_path(path, monkeypatch)
    x, w, b = _batch_norm_inputs(True)
    cw = torch.randn(4, 4, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    conv = genkern.ops.conv_transpose2d if transposed else genkern.ops.conv2d
    stock_conv = F.conv_transpose2d if transposed else F.conv2d
    cw = cw.requires_grad_()

    def ours(x, w, b):
        h = genkern.ops.batch_norm(x, None, None, w, b, True, activation="relu", backend=backend)
        return conv(h, cw, activation="tanh", backend=backend)

    def stock(x, w, b):
        return torch.tanh(stock_conv(F.relu(F.batch_norm(x, None, None, w, b, True)), cw))

    got, want = _penalized(ours, x, w, b), _penalized(stock, x, w, b)
    _assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("pool", ["max_pool2d", "avg_pool2d"])
def test_pool_gradient_constant_in_the_input_still_requires_grad(pool, path, monkeypatch):
    # a pool's input gradient for a constant upstream gradient (a penalty on a pool's output
    # sum) is constant: stock's requires grad all the same, so the penalty's backward runs;
    # genkern's did not ("element 0 of tensors does not require grad")
    backend = _use_path(path, monkeypatch)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    for f in (getattr(genkern.ops, pool), getattr(F, pool)):
        kw = {"backend": backend} if f is getattr(genkern.ops, pool) else {}
        (g,) = torch.autograd.grad(f(x, 2, **kw).sum(), x, create_graph=True)
        assert g.requires_grad
        g.pow(2).sum().backward()  # (stock's leaves zeros in x.grad, genkern's None)


def _r1_steps(discriminator, steps=2):
    """A DCGAN discriminator's training steps with an R1 penalty (Mescheder et al. 2018) on the
    real images: the losses and the weights."""
    opt = torch.optim.Adam(discriminator.parameters(), 1e-3, betas=(0.5, 0.999))
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        real = torch.randn(4, 3, 32, 32, generator=g, dtype=torch.float64).requires_grad_()
        fake = torch.randn(4, 3, 32, 32, generator=g, dtype=torch.float64)
        real_logits = discriminator(real)
        (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
        penalty = grad.pow(2).flatten(1).sum(1).mean()
        loss = genkern.ops.discriminator_loss(real_logits, discriminator(fake)) + 5 * penalty
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses), [p.detach() for p in discriminator.parameters()]


def test_r1_penalty_on_the_dcgan_discriminator_trains_as_stock():
    # the reference DCGAN discriminator (conv + BN + LeakyReLU) refused: batch_norm had no
    # second derivative
    torch.manual_seed(0)
    stock = genkern.models.DCGANDiscriminator(image_size=32, impl="torch").double()
    ours = genkern.nn.convert(copy.deepcopy(stock))
    assert isinstance(ours.main[3], genkern.nn.BatchNorm2d)
    want, got = _r1_steps(stock), _r1_steps(ours)
    torch.testing.assert_close(got[0], want[0], rtol=1e-10, atol=1e-12)
    _assert_close(got[1], want[1], rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
def test_batch_norm_kept_output_with_an_input_needing_no_gradient(path, monkeypatch):
    # found by fuzz round 23: where the batch norm keeps y in x's place and x needs no gradient
    # (real images into a discriminator whose first convs are frozen), x recovered from y hung
    # the C++ path (its graph led back into the node running) and raised on the custom op
    backend = _use_path(path, monkeypatch)
    x, w, b = _batch_norm_inputs(True)
    x = x.detach()

    def grads(f):
        (gb,) = torch.autograd.grad((f(x, w, b) ** 2).sum(), b, create_graph=True)
        return [gb, *torch.autograd.grad(gb.pow(2).sum(), (w, b))]

    ours = grads(
        lambda x, w, b: genkern.ops.batch_norm(
            x,
            None,
            None,
            w,
            b,
            True,
            activation="leaky_relu",
            negative_slope=SLOPE,
            backend=backend,
        )  # fmt: skip
    )
    stock = grads(lambda x, w, b: F.leaky_relu(F.batch_norm(x, None, None, w, b, True), SLOPE))
    _assert_close(ours, stock, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("name", ["batch_norm", "conv2d", "linear"])
def test_a_step_on_the_bias_before_a_second_derivative_is_not_seen(name, path, monkeypatch):
    # found by fuzz round 23: the recomputation read the bias as it is at the backward, so an
    # optimizer step on it in between (a penalty taken after the step) moved the gradients (off
    # by 0.65 on values of 1); stock's backward reads what its forward saved
    backend = _use_path(path, monkeypatch)
    x, w, b = _batch_norm_inputs(True)
    if name == "batch_norm":
        ours = lambda x, w, b: genkern.ops.batch_norm(  # noqa: E731
            x, None, None, w, b, True, activation="tanh", backend=backend
        )
        stock = lambda x, w, b: torch.tanh(F.batch_norm(x, None, None, w, b, True))  # noqa: E731
    else:
        if name == "linear":
            x, cw, op, ref = (
                x.flatten(1),
                torch.randn(4, 100).double(),
                genkern.ops.linear,
                F.linear,
            )
        else:
            cw, op, ref = torch.randn(4, 4, 3, 3).double(), genkern.ops.conv2d, F.conv2d
        ours = lambda x, w, b: op(x, cw * w[0], b, activation="tanh", backend=backend)  # noqa: E731
        stock = lambda x, w, b: torch.tanh(ref(x, cw * w[0], b))  # noqa: E731

    def penalized(f):
        y = f(x, w, b)
        with torch.no_grad():
            b.add_(0.5)
        (gx,) = torch.autograd.grad((y * y).sum(), x, create_graph=True)
        out = [gx, *torch.autograd.grad(gx.pow(2).sum(), (x, w, b))]
        with torch.no_grad():
            b.sub_(0.5)
        return out

    _assert_close(penalized(ours), penalized(stock), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("name", ["batch_norm", "conv2d"])
def test_hooks_on_the_input_run_once_under_create_graph(name, path, monkeypatch):
    # found by fuzz round 23: the recomputation's own grad fired a tensor hook on the op's input
    # (and retain_grad's) once more, so the retained gradient came out twice stock's
    backend = _use_path(path, monkeypatch)
    x0, w, b = _batch_norm_inputs(True)
    cw = torch.randn(4, 4, 3, 3, dtype=torch.float64)
    results = []
    for stock in (False, True):
        h = x0 * 2
        calls = []
        h.register_hook(lambda g: calls.append(1))
        h.retain_grad()
        if name == "batch_norm":
            f = F.batch_norm if stock else genkern.ops.batch_norm
            kw = {} if stock else {"backend": backend}
            y = f(h, None, None, w, b, True, **kw)
        else:
            y = F.conv2d(h, cw) if stock else genkern.ops.conv2d(h, cw, backend=backend)
        (g,) = torch.autograd.grad((y * y).sum(), x0, create_graph=True)
        results.append((len(calls), h.grad))
    assert results[0][0] == results[1][0] == 1
    _assert_close([results[0][1]], [results[1][1]], rtol=1e-10, atol=1e-12)


def _biased_op(name, backend=None):
    """(genkern's, stock's) f(x, w, b) for name, with tanh (a nonzero second derivative)."""
    kw = {} if backend is None else {"backend": backend}
    cw = torch.randn(4, 4, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    if name == "batch_norm":
        return (
            lambda x, w, b: genkern.ops.batch_norm(
                x, None, None, w, b, True, activation="tanh", **kw
            ),
            lambda x, w, b: torch.tanh(F.batch_norm(x, None, None, w, b, True)),
        )
    return (
        lambda x, w, b: genkern.ops.conv2d(x, cw * w[0], b, activation="tanh", **kw),
        lambda x, w, b: torch.tanh(F.conv2d(x, cw * w[0], b)),
    )


@pytest.mark.parametrize("change", ["nonleaf_in_place", "grad_on_since", "frozen_since"])
@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("name", ["batch_norm", "conv2d"])
def test_the_bias_as_the_forward_saw_it_in_the_graph(name, path, change, monkeypatch):
    # found by fuzz round 24: a bias computed from a parameter (b = p * 1) and changed in place
    # before a penalty's backward sent its second derivative through the in-place op (off by up
    # to 235); one whose requires_grad was turned on after the forward got a gradient (stock's
    # stays None); one frozen after the forward raised on the custom op
    backend = _use_path(path, monkeypatch)
    results = []
    for f in _biased_op(name, backend):
        x, w, p = _batch_norm_inputs(True)
        b = (
            p * 1.0
            if change == "nonleaf_in_place"
            else p.detach().requires_grad_(change != "grad_on_since")
        )
        y = f(x, w, b)
        with torch.no_grad():
            if change == "nonleaf_in_place":
                b.mul_(3)
        if change == "grad_on_since":
            b.requires_grad_()
        if change == "frozen_since":
            b.requires_grad_(False)
        (gx,) = torch.autograd.grad((y * y).sum(), x, create_graph=True)
        gx.pow(2).sum().backward()
        results.append([gx, x.grad, w.grad, p.grad, b.grad if b.is_leaf else None])
    _assert_close(results[0], results[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("name", ["batch_norm", "conv2d"])
def test_batched_gradients_with_a_bias_needing_a_gradient(name, path, monkeypatch):
    # found by fuzz round 24: batched gradients (grad mode off in their backward) met a held bias
    # built without a graph and raised, for a Jacobian in x alone on the custom op
    backend = _use_path(path, monkeypatch)
    x, w, b = _batch_norm_inputs(True)
    rows = []
    for f in _biased_op(name, backend):
        rows.append(torch.autograd.functional.jacobian(f, (x, w, b), vectorize=True))
    for a, c in zip(*rows, strict=True):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("batched", [False, True], ids=["create_graph", "is_grads_batched"])
@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("name", list(OPS))
def test_weight_frozen_between_forward_and_backward(name, path, batched, monkeypatch):
    # found by fuzz round 28: a GAN loop toggles D's parameters' requires_grad; a weight frozen
    # after the forward made the Python path's composite raise ("One of the differentiated
    # Tensors does not require grad"); stock's gradient skips it (w.grad stays None)
    backend = _use_path(path, monkeypatch)
    op, stock, _, _ = OPS[name]
    results = []
    for f in (lambda x, w, b: op(x, w, b, activation="tanh", backend=backend), stock_tanh(stock)):
        x, w, b = _inputs(name, torch.float64)
        y = f(x, w, b)
        w.requires_grad_(False)
        if batched:
            g = torch.stack([torch.ones_like(y), torch.linspace(-1, 1, y.numel()).view_as(y)])
            results.append(torch.autograd.grad(y, x, g.to(y.dtype), is_grads_batched=True))
        else:
            (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
            gx.square().sum().backward()
            results.append((gx, x.grad, w.grad, b.grad))
    _assert_close(results[0], results[1], rtol=1e-12, atol=1e-12)


def stock_tanh(stock):
    return lambda x, w, b: torch.tanh(stock(x, w, b))


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
def test_channels_last_weight_of_one_output_channel(path, monkeypatch):
    # found by fuzz round 29: a DCGAN discriminator's last conv (8 -> 1, 4x4 over 4x4) converted
    # to channels_last, float64, under a penalty: the composite's inputs were view_as views,
    # whose recomputed size-1 stride made ATen's conv backward raise "slow_conv2d: grad_weight
    # must be contiguous"; stock's ran
    backend = _use_path(path, monkeypatch)
    g = torch.Generator().manual_seed(0)
    cl = torch.channels_last
    w = torch.randn(1, 8, 4, 4, generator=g, dtype=torch.float64).to(memory_format=cl)
    h = torch.rand(4, 8, 4, 4, generator=g, dtype=torch.float64).to(memory_format=cl)
    results = []
    for f in (lambda h, w: genkern.ops.conv2d(h, w, backend=backend), F.conv2d):
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
        first = torch.autograd.grad(f(hh, ww).sum(), (hh, ww), create_graph=True)
        sum(t.square().sum() for t in first).backward()
        results.append((*first, hh.grad, ww.grad))
    _assert_close(results[0], results[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
def test_penalty_gives_no_zero_grads_where_stock_gives_none(path, monkeypatch):
    # conv -> eval batch norm -> conv, converted, under a gradient penalty: its second derivative
    # sends nothing into the last conv's input, so the batch norm's bias and the first conv's get
    # no .grad, as stock's (the C++ Functions handed the batch norm's backward a zero-filled
    # gradient: a .grad of 0.0, which weight decay, or Adam's moments, then moved)
    _use_path(path, monkeypatch)
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)]
    stock = nn.Sequential(*layers, nn.Conv2d(4, 2, 3, padding=1), nn.Flatten(), nn.Linear(32, 1))
    stock = stock.double().eval()
    with torch.no_grad():
        stock[1].weight.normal_(), stock[1].bias.normal_(), stock[1].running_var.uniform_(0.5, 2)
    ours = genkern.nn.convert(copy.deepcopy(stock))
    results = []
    for net in (ours, stock):
        x = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        x.requires_grad_()
        (gx,) = torch.autograd.grad(net(x).sum(), x, create_graph=True)
        (gx**2).sum().backward()
        results.append({n: p.grad for n, p in net.named_parameters()})
    for name, want in results[1].items():
        got = results[0][name]
        assert (got is None) == (want is None), name
        if want is not None:
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=name)
