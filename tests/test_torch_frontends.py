"""genkern under PyTorch's other front ends: torch.jit.trace records the custom ops (the eager
fast paths step aside, or the traced graph would hold only their outputs' allocations); the
torch.func transforms (grad, vjp, jacrev, hessian, jvp, jacfwd, vmap) and torch.autograd's
forward_ad run each op's stock composite, so they give stock's derivatives (the custom ops'
autograd refuses the differentiating transforms, drops forward tangents and loops under vmap:
found by fuzzes), and plain calls keep the fused ops."""

import subprocess
import sys
import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn as nn
import torch.nn.functional as F
from conftest import DEVICE

import genkern
import genkern.nn as gnn
from genkern import models


def _layers():
    return [
        (gnn.Conv2d(3, 4, 3, padding=1, activation="silu"), (2, 3, 8, 8)),
        (gnn.Conv2d(3, 4, 3, activation="leaky_relu", negative_slope=0.2), (2, 3, 8, 8)),
        (
            gnn.ConvTranspose2d(3, 4, 4, 2, 1, activation="leaky_relu", negative_slope=-0.1),
            (2, 3, 5, 5),
        ),
        (gnn.Linear(6, 5, activation="silu"), (3, 6)),
        (gnn.BatchNorm2d(3, activation="relu"), (4, 3, 5, 5)),
        (gnn.MaxPool2d(2), (2, 3, 8, 8)),
        (gnn.AvgPool2d(3, 2, 1), (2, 3, 9, 9)),
        (gnn.Upsample(size=(9, 7)), (2, 3, 4, 4)),  # with a scale: stock's op (see below)
    ]


def _trace(module, x, grad: bool):
    with warnings.catch_warnings(), torch.set_grad_enabled(grad):
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.jit.trace(module, x)  # check_trace on: the same graph twice


@pytest.mark.parametrize("grad", [False, True], ids=["traced-no-grad", "traced-with-grad"])
@pytest.mark.parametrize("index", range(len(_layers())))
def test_jit_trace_records_the_ops(index, grad):
    torch.manual_seed(index)
    module, shape = _layers()[index]
    module = module.to(DEVICE).eval()
    traced = _trace(module, torch.randn(shape, device=DEVICE), grad)
    # batch_norm is recorded as stock's (see the running statistics' test below)
    recorded = "aten::batch_norm" if isinstance(module, gnn.BatchNorm2d) else "genkern::"
    assert any(n.kind().startswith(recorded) for n in traced.graph.nodes())
    x = torch.randn(shape, device=DEVICE, requires_grad=True)  # a new input: not the traced one
    y, y_eager = traced(x), module(x)
    torch.testing.assert_close(y, y_eager)
    g = torch.randn_like(y)
    params = [p for p in module.parameters()]
    traced_grads = torch.autograd.grad(y, [x, *params], g)
    eager_grads = torch.autograd.grad(y_eager, [x, *params], g)
    for a, b in zip(traced_grads, eager_grads):
        torch.testing.assert_close(a, b)


def test_jit_trace_of_a_converted_model():
    torch.manual_seed(0)
    stock = models.DCGANGenerator(nz=8, ngf=4, nc=3, image_size=32, impl="torch").eval()
    model = gnn.convert(stock, fold_bn=True).to(DEVICE)
    z = torch.randn(2, 8, 1, 1, device=DEVICE)
    with torch.no_grad():
        traced = _trace(model, z, grad=False)
        z2 = torch.randn(3, 8, 1, 1, device=DEVICE)
        torch.testing.assert_close(traced(z2), stock.to(DEVICE)(z2), rtol=1e-4, atol=1e-5)


def _op_calls():
    """(name, input shape, genkern's call, stock's composite of it)."""
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    wt = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    lw = torch.randn(5, 8, dtype=torch.float64)
    target = torch.rand(2, 4, dtype=torch.float64)
    ops = genkern.ops

    def bce(r, f):
        return F.softplus(-r).mean() + F.softplus(f).mean()

    def kl(mu, lv):
        return -0.5 * torch.sum(1 + lv - mu**2 - lv.exp())

    return [
        (
            "conv2d",
            (1, 3, 6, 6),
            lambda x: ops.conv2d(x, w, activation="tanh"),
            lambda x: torch.tanh(F.conv2d(x, w)),
        ),
        (
            "conv_transpose2d",
            (1, 3, 4, 4),
            lambda x: ops.conv_transpose2d(x, wt, stride=2, activation="silu"),
            lambda x: F.silu(F.conv_transpose2d(x, wt, stride=2)),
        ),
        (
            "linear",
            (2, 8),
            lambda x: ops.linear(x, lw, activation="leaky_relu", negative_slope=0.2),
            lambda x: F.leaky_relu(F.linear(x, lw), 0.2),
        ),
        (
            "batch_norm",
            (2, 3, 4, 4),
            lambda x: ops.batch_norm(x, None, None, training=True, activation="relu"),
            lambda x: F.relu(F.batch_norm(x, None, None, training=True)),
        ),
        (
            "max_pool2d",
            (1, 3, 4, 4),
            lambda x: ops.max_pool2d(x, 2, activation="sigmoid"),
            lambda x: torch.sigmoid(F.max_pool2d(x, 2)),
        ),
        ("avg_pool2d", (1, 3, 4, 4), lambda x: ops.avg_pool2d(x, 2), lambda x: F.avg_pool2d(x, 2)),
        (
            "upsample_nearest2d",
            (1, 3, 4, 4),
            lambda x: ops.upsample_nearest2d(x, 2),
            lambda x: F.interpolate(x, scale_factor=2, mode="nearest"),
        ),
        (
            "discriminator_loss",
            (8,),
            lambda x: ops.discriminator_loss(x, x * 2),
            lambda x: bce(x, x * 2),
        ),
        ("generator_loss", (8,), lambda x: ops.generator_loss(x, "hinge"), lambda x: -x.mean()),
        (
            "vae_loss",
            (2, 4),
            lambda x: ops.vae_loss(x, target, x, x),
            lambda x: F.binary_cross_entropy_with_logits(x, target, reduction="sum") + kl(x, x),
        ),
        (
            "reparameterize",
            (2, 4),
            lambda x: ops.reparameterize(x, x, torch.full_like(x, 0.3)),
            lambda x: x + 0.3 * torch.exp(0.5 * x),
        ),
    ]


def _same(a, b):
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("how", ["jvp", "jacfwd", "dual"])
@pytest.mark.parametrize("index", range(len(_op_calls())))
def test_forward_mode_ad_is_stocks(index, how):
    # the custom ops have no forward derivative (they dropped the tangent: zeros, or None)
    name, shape, fn, stock = _op_calls()[index]
    x = torch.randn(shape, dtype=torch.float64)
    t = torch.randn(shape, dtype=torch.float64)
    if how == "jvp":
        for a, b in zip(torch.func.jvp(fn, (x,), (t,)), torch.func.jvp(stock, (x,), (t,))):
            _same(a, b)
    elif how == "jacfwd":
        _same(torch.func.jacfwd(fn)(x), torch.func.jacfwd(stock)(x))
    else:
        with fwAD.dual_level():
            got = fwAD.unpack_dual(fn(fwAD.make_dual(x, t)))
            want = fwAD.unpack_dual(stock(fwAD.make_dual(x, t)))
        _same(got.primal, want.primal)
        _same(got.tangent, want.tangent)


@pytest.mark.parametrize("how", ["grad", "vjp", "jacrev", "hessian", "per_sample"])
@pytest.mark.parametrize("index", range(len(_op_calls())))
def test_func_transforms_are_stocks(index, how):
    # torch.func's reverse mode: the custom ops' generated autograd.Function raised ("it must
    # override the setup_context staticmethod")
    name, shape, fn, stock = _op_calls()[index]
    x = torch.randn(shape, dtype=torch.float64)
    if how == "grad":
        _same(
            torch.func.grad(lambda x: fn(x).sum())(x), torch.func.grad(lambda x: stock(x).sum())(x)
        )
    elif how == "vjp":
        (y, back), (y2, back2) = torch.func.vjp(fn, x), torch.func.vjp(stock, x)
        g = torch.randn_like(y2)
        _same(y, y2)
        _same(back(g)[0], back2(g)[0])
    elif how == "jacrev":
        _same(torch.func.jacrev(fn)(x), torch.func.jacrev(stock)(x))
    elif how == "hessian":
        _same(
            torch.func.hessian(lambda x: fn(x).sum())(x),
            torch.func.hessian(lambda x: stock(x).sum())(x),
        )
    else:  # per-sample gradients: vmap over grad, one row of x at a time
        rows = torch.stack([x, 0.5 * x])

        def per_sample(f):
            return torch.func.vmap(torch.func.grad(lambda r: f(r).sum()))(rows)

        _same(per_sample(fn), per_sample(stock))


def test_every_transform_takes_the_composite_and_plain_calls_the_fused_ops():
    seen = []

    def probe(t):
        seen.append(genkern.ops._fused.stock_composite(t))
        return genkern.ops.conv2d(t, torch.ones(2, 3, 1, 1))

    x = torch.randn(4, 1, 3, 5, 5)
    stock = torch.func.vmap(lambda t: F.conv2d(t, torch.ones(2, 3, 1, 1)))(x)
    torch.testing.assert_close(torch.func.vmap(probe)(x), stock)
    torch.func.grad(lambda t: probe(t).sum())(x[0])
    probe(x[0])
    assert seen == [True, True, False]


@pytest.mark.parametrize("act", ["silu", "leaky_relu"])
@pytest.mark.parametrize("op", ["conv2d", "max_pool2d", "batch_norm"])
def test_vmap_then_backward_through_an_activation_reading_its_input(op, act):
    # found by fuzz round 27: inside vmap a batched tensor reads requires_grad False, so the
    # fused forward kept no pre-activation and the backward raised (max_pool2d: a crash,
    # SIGSEGV, reading the empty tensor); vmap now takes the stock composites
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    kw = dict(activation=act, negative_slope=-0.3)
    calls = {
        "conv2d": (
            lambda t: genkern.ops.conv2d(t, w, None, 1, 1, **kw),
            lambda t: F.conv2d(t, w, None, 1, 1),
        ),
        "max_pool2d": (lambda t: genkern.ops.max_pool2d(t, 2, **kw), lambda t: F.max_pool2d(t, 2)),
        "batch_norm": (
            lambda t: genkern.ops.batch_norm(t, None, None, training=True, **kw),
            lambda t: F.batch_norm(t, None, None, training=True),
        ),
    }
    ours, stock = calls[op]
    grads = []
    for f in (ours, lambda t: reference_activation(stock(t), act, -0.3)):
        x = torch.randn(
            2, 2, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
        )
        x.requires_grad_()
        torch.func.vmap(f)(x).square().sum().backward()
        grads.append(x.grad)
    _same(grads[0], grads[1])


def reference_activation(y, act, slope):
    return genkern.reference.activation(y, act, slope)


def test_ensemble_of_training_batch_norms_updates_each_members_statistics():
    # found by fuzz round 27: vmap over a stack_module_state ensemble raised "Batching rule not
    # implemented for genkern::batch_norm_update_stats"
    import copy

    torch.manual_seed(0)
    stocks = [nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train() for _ in range(3)]
    ours = [gnn.convert(copy.deepcopy(m)) for m in stocks]
    x = torch.randn(5, 3, 6, 6)

    def ensemble(models):
        params, buffers = torch.func.stack_module_state(models)
        base = copy.deepcopy(models[0]).to("meta")

        def member(p, b, x):
            return torch.func.functional_call(base, (p, b), (x,))

        return torch.func.vmap(member, in_dims=(0, 0, None))(params, buffers, x), buffers

    (y, b), (y2, b2) = ensemble(ours), ensemble(stocks)
    torch.testing.assert_close(y, y2)
    for k in b2:
        torch.testing.assert_close(b[k], b2[k])


def test_transforms_refuse_what_eager_refuses():
    # found by fuzz round 27: the composite ran before genkern's checks
    x = torch.randn(3, 4, 5)
    w = torch.randn(2, 3, 3, 3)
    calls = [
        (lambda x: genkern.ops.upsample_nearest2d(x, 2), ValueError),
        (lambda x: genkern.ops.conv2d(x, w, backend="nope"), ValueError),
        (lambda x: genkern.ops.discriminator_loss(x, torch.ones(3, dtype=torch.long)), TypeError),
    ]
    for fn, exc in calls:
        with pytest.raises(exc) as eager:
            fn(x)
        with pytest.raises(exc) as inside:
            torch.func.vjp(fn, x)
        assert str(inside.value) == str(eager.value)


@pytest.mark.parametrize("transform", ["grad", "jvp"])
def test_compiled_transforms(transform):
    # found by fuzz round 27: torch.compile of grad raised, and of jvp gave zero tangents
    torch._dynamo.reset()
    x, w, b = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3), torch.randn(4)
    t = torch.randn_like(x)

    def run(conv):
        if transform == "grad":
            return torch.func.grad(lambda w: conv(x, w).square().sum())(w)
        return torch.func.jvp(lambda x: conv(x, w), (x,), (t,))[1]

    def ours(x, w):
        return genkern.ops.conv2d(x, w, b, 1, 1, activation="tanh")

    def stock(x, w):
        return torch.tanh(F.conv2d(x, w, b, 1, 1))

    torch.testing.assert_close(torch.compile(lambda: run(ours))(), run(stock))


def test_func_grad_and_per_sample_gradients_of_a_converted_model():
    # functional_call over a converted DCGAN discriminator (conv + BN + LeakyReLU): parameter
    # gradients, per-sample gradients (eval) and jacrev(grad) as stock's
    torch.manual_seed(0)
    stock = models.DCGANDiscriminator(nc=3, ndf=4, image_size=32, impl="torch").double()
    ours = gnn.convert(stock)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    params = {k: v.detach() for k, v in stock.named_parameters()}

    def loss(model, p, xs):
        buffers = {k: v.clone() for k, v in model.named_buffers()}
        return torch.func.functional_call(model, (p, buffers), (xs,)).sum()

    for mode in ("train", "eval"):
        stock.train(mode == "train")
        ours.train(mode == "train")
        got = torch.func.grad(lambda p: loss(ours, p, x))(params)
        want = torch.func.grad(lambda p: loss(stock, p, x))(params)
        for k in want:
            _same(got[k], want[k])
    got, want = (
        torch.func.vmap(torch.func.grad(lambda p, xi: loss(m, p, xi[None])), in_dims=(None, 0))(
            params, x
        )
        for m in (ours, stock)
    )
    for k in want:
        _same(got[k], want[k])
    got, want = (
        torch.func.jacrev(torch.func.grad(lambda xs: m(xs).sum()))(x[:1]) for m in (ours, stock)
    )
    _same(got, want)


def test_plain_tensors_inside_a_dual_level_still_run_fused():
    # forward AD elsewhere in the program: genkern ops on tensors without tangents run as usual
    x = torch.randn(2, 3, 4, 4)
    with fwAD.dual_level():
        fwAD.make_dual(torch.randn(3), torch.randn(3))
        assert not genkern.ops._fused.stock_composite(x)
        torch.testing.assert_close(genkern.ops.max_pool2d(x, 2), nn.functional.max_pool2d(x, 2))


def test_forward_ad_through_a_view_of_a_dual_tensor():
    """A view of a dual tensor carries its base's tangent (made when asked for)."""
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    t = torch.ones_like(x)
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(x, t)
        got = fwAD.unpack_dual(genkern.ops.conv2d(dual[:, :, 1:], w)).tangent
    _same(got, F.conv2d(t[:, :, 1:], w))


def test_jit_script_is_refused_clearly():
    # found by a fuzz: torch.jit.script failed with TorchScript's error about a line of a forward
    # (genkern/nn/conv.py: "Variable 'padding' previously had type Tuple[int, int]")
    model = genkern.nn.convert(
        torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AvgPool2d(2))
    )
    for m in (model, genkern.nn.AvgPool2d(2), genkern.nn.VAELoss()):
        with pytest.raises(RuntimeError, match=r"cannot be compiled by torch.jit.script; use"):
            torch.jit.script(m)
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(torch.jit.trace(model, x)(x), model(x))


def test_numpy_and_tensor_hyperparameters_as_stock():
    # found by a fuzz: numpy integers for kernel_size / stride / padding / groups / output_padding
    # / divisor_override, and a numpy or 0-dim tensor momentum or beta, raised TypeError in a
    # converted model where stock's argument parser takes them
    import numpy as np

    i = np.int64
    torch.manual_seed(0)
    stock = nn.Sequential(
        nn.Conv2d(4, 8, i(3), i(2), i(1), groups=i(2)),
        nn.ConvTranspose2d(8, 4, i(3), i(2), i(1), output_padding=i(1)),
        nn.MaxPool2d(i(3), i(2), i(1)),
        nn.AvgPool2d(i(2), divisor_override=i(3)),
        nn.BatchNorm2d(4, momentum=np.float32(0.3)),
    )
    ours = gnn.convert(stock)
    assert isinstance(ours[4], gnn.BatchNorm2d)
    x = torch.randn(2, 4, 16, 16)
    torch.testing.assert_close(ours(x), stock(x))
    torch.testing.assert_close(ours[4].running_var, stock[4].running_var)
    ours[4].momentum = torch.tensor(0.5)
    stock[4].momentum = torch.tensor(0.5)
    torch.testing.assert_close(ours(x), stock(x))
    torch.testing.assert_close(ours[4].running_mean, stock[4].running_mean)
    r, t = torch.randn(3, 5), torch.rand(3, 5)
    mu, lv = torch.randn(3, 2), torch.randn(3, 2)
    for beta in (np.float32(0.5), torch.tensor(0.5)):
        torch.testing.assert_close(
            genkern.ops.vae_loss(r, t, mu, lv, beta=beta),
            genkern.ops.vae_loss(r, t, mu, lv, beta=0.5),
        )
    w = torch.randn(8, 4, 3, 3)
    for slope in (np.float32(0.2), torch.tensor(0.2)):  # a later fuzz: these were refused
        torch.testing.assert_close(
            genkern.ops.conv2d(x, w, activation="leaky_relu", negative_slope=slope),
            F.leaky_relu(F.conv2d(x, w), 0.2),
        )


def _shape_changing_calls():
    """(name, traced shape, run shape, fn): each op traced at one size and run at another."""
    w, w2 = torch.randn(4, 3, 3, 3), torch.randn(4, 3, 2, 2)
    wt, lw = torch.randn(3, 4, 3, 3), torch.randn(5, 8)
    ops = genkern.ops
    return [
        ("conv2d", (1, 3, 6, 6), (2, 3, 9, 7), lambda x: ops.conv2d(x, w, activation="tanh")),
        ("conv2d same", (1, 3, 6, 6), (2, 3, 9, 7), lambda x: ops.conv2d(x, w2, padding="same")),
        ("conv_transpose2d", (1, 3, 4, 4), (2, 3, 5, 7), lambda x: ops.conv_transpose2d(x, wt)),
        ("linear", (2, 3, 8), (5, 1, 8), lambda x: ops.linear(x, lw, activation="relu")),
        (
            "batch_norm",
            (2, 3, 4, 4),
            (3, 3, 5, 7),
            lambda x: ops.batch_norm(x, None, None, training=True),
        ),
        ("max_pool2d", (1, 3, 4, 4), (2, 3, 9, 7), lambda x: ops.max_pool2d(x, 2, ceil_mode=True)),
        ("avg_pool2d", (1, 3, 5, 5), (2, 3, 9, 7), lambda x: ops.avg_pool2d(x, 3, 2, 1)),
        ("upsample x2", (1, 3, 4, 4), (2, 3, 5, 7), lambda x: ops.upsample_nearest2d(x, 2)),
        ("upsample x1.5", (1, 3, 4, 4), (2, 3, 5, 7), lambda x: ops.upsample_nearest2d(x, 1.5)),
        ("generator_loss", (8,), (13,), lambda x: ops.generator_loss(x, "hinge")),
        (
            "vae_loss mean",
            (2, 4),
            (5, 4),
            lambda x: ops.vae_loss(x, torch.sigmoid(x), x, x, reduction="mean"),
        ),
    ]


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("index", range(len(_shape_changing_calls())))
def test_jit_trace_runs_other_input_sizes_right(index):
    # found by fuzz round 10a: a traced upsample kept the traced input's output size (8x8 for a
    # 5x7 input), tracing vae_loss failed on its list of bools, and a traced padding='same' conv
    # failed an internal assert of torch's tracer
    name, traced_shape, shape, fn = _shape_changing_calls()[index]
    traced = torch.jit.trace(fn, torch.randn(traced_shape), check_trace=False)
    x = torch.randn(shape)
    torch.testing.assert_close(traced(x), fn(x), msg=name)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("act", [None, "relu", "silu", "leaky_relu"])
def test_jit_traced_batch_norm_updates_running_stats_and_gradients_at_other_sizes(act):
    # found by fuzz round 12b: the running_var update's count (the traced batch's size) and
    # whether the backward keeps act's input (silu, a negative slope) were traced as constants
    def make():
        return gnn.BatchNorm2d(3, activation=act, negative_slope=-0.2).double().train()

    traced_bn, eager_bn = make(), make()
    with torch.no_grad():
        traced = torch.jit.trace(traced_bn, torch.randn(4, 3, 5, 5, dtype=torch.float64))
    traced_bn.load_state_dict(eager_bn.state_dict())  # the trace's own call moved its stats
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    y, y_eager = traced(x), eager_bn(x)
    torch.testing.assert_close(y, y_eager)
    torch.testing.assert_close(traced_bn.running_var, eager_bn.running_var)
    g = torch.randn_like(y)
    torch.testing.assert_close(
        torch.autograd.grad(y, x, g)[0], torch.autograd.grad(y_eager, x, g)[0]
    )


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_jit_traced_losses_give_gradients_to_inputs_that_require_them():
    # found by fuzz round 12b: which gradients the fused pass makes was traced from the example
    # inputs (none required grad): the traced losses gave no gradients
    target = torch.rand(2, 4)
    calls = [
        lambda r, f: genkern.ops.discriminator_loss(r, f, "hinge"),
        lambda r, f: genkern.ops.generator_loss(f) + 0 * r.sum(),
        lambda r, f: genkern.ops.vae_loss(r, target, f, f * 0.5, reduction="mean"),
    ]
    for fn in calls:
        traced = torch.jit.trace(fn, (torch.randn(2, 4), torch.randn(2, 4)), check_trace=False)
        r, f = torch.randn(2, 4, requires_grad=True), torch.randn(2, 4, requires_grad=True)
        got = torch.autograd.grad(traced(r, f), (r, f))
        want = torch.autograd.grad(fn(r, f), (r, f))
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("input_grad", [False, True], ids=["input", "input_grad"])
@pytest.mark.parametrize("name", ["DCGANDiscriminator", "DCGANGenerator", "CNNClassifier"])
def test_flop_counter_counts_a_genkern_model_as_stocks(name, input_grad):
    # found by fuzz round 21: FlopCounterMode (a profiler's or an MFU count's) counted 0 FLOPs
    # for a genkern model, whose layers are custom ops with no formula: now stock's formulas
    from torch.utils.flop_counter import FlopCounterMode

    shape = {"DCGANGenerator": (2, 100), "CNNClassifier": (2, 3, 32, 32)}.get(name, (2, 3, 64, 64))
    counts = []
    for impl in ("torch", "genkern"):
        torch.manual_seed(0)
        model = getattr(models, name)(impl=impl)
        x = torch.randn(shape, requires_grad=input_grad)
        with FlopCounterMode(display=False) as counter:
            model(x).sum().backward()
        counts.append(counter.get_total_flops())
    assert counts[0] > 0 and counts[1] == counts[0]
    torch.manual_seed(0)
    x3 = torch.randn(2, 5, 7, requires_grad=True)  # linear over a 3-D input
    w = torch.randn(4, 7, requires_grad=True)
    for f in (genkern.ops.linear, torch.nn.functional.linear):
        with FlopCounterMode(display=False) as counter:
            f(x3, w).sum().backward()
        assert counter.get_total_flops() == 3 * 2 * 2 * 5 * 4 * 7


@pytest.mark.parametrize("first", ["flop_counter", "genkern"])
def test_flop_formulas_register_whichever_is_imported_first(first):
    # genkern registers them when torch.utils.flop_counter is imported (it imports triton), or at
    # once where it already is
    imports = ["import torch.utils.flop_counter", "import genkern"]
    code = "\n".join([*(imports if first == "flop_counter" else imports[::-1]), _COUNT_ONE_CONV])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["15552", "15552"]


_COUNT_ONE_CONV = """import torch
from torch.utils.flop_counter import FlopCounterMode
x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
for conv in (genkern.ops.conv2d, torch.nn.functional.conv2d):
    with FlopCounterMode(display=False) as counter: conv(x, w)
    print(counter.get_total_flops())"""
