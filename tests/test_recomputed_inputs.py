"""A conv fed by a batch norm's output recomputes that output in its backward (cpu eager path,
csrc/cpu/eager_autograd.cpp's RecomputableOutput) instead of keeping it: the same bits as keeping
it, the float64 reference's values, and the output itself no longer among the saved tensors."""

import contextlib

import pytest
import torch
from conftest import grid_backends

import genkern
from genkern import models, reference, testing
from genkern.ops import _fused

pytestmark = pytest.mark.skipif(
    "cpu" not in grid_backends(torch.float32), reason="the C++ extension genkern._C is not built"
)

# (activation, slope, BN scale low): each way the batch norm node keeps x rather than y
BN_ACTS = [
    ("relu", 0.01, 0.5),  # relu loses x where y is 0
    (None, 0.01, 0.5),  # identity: y is kept by nobody else
    ("leaky_relu", 0.2, 0.0),  # a zero scale: y cannot give x back (batch_norm_keeps_output)
    ("silu", 0.01, 0.5),  # the batch norm keeps the pre-activation
]
CONVS = {
    "conv2d": (genkern.ops.conv2d, reference.conv2d, lambda c: (6, c, 3, 3), (2, 1)),
    "conv_transpose2d": (
        genkern.ops.conv_transpose2d,
        reference.conv_transpose2d,
        lambda c: (c, 6, 4, 4),
        (2, 1),
    ),
}


def _inputs(dtype, layout, scale_low, channels=16):
    x = testing.make_tensor((4, channels, 6, 5), dtype, "cpu", layout, True, low=-2, high=3)
    w = testing.make_tensor([channels], dtype, "cpu", requires_grad=True, low=scale_low, high=1.5)
    with torch.no_grad():
        w[0] = scale_low
    b = testing.make_tensor([channels], dtype, "cpu", requires_grad=True)
    return x, w, b


def _chain(conv, act, slope, clone=False, ops=genkern.ops):
    op, ref_op, _, (stride, padding) = CONVS[conv]
    if ops is reference:
        op = ref_op

    def fn(x, w, b, cw):
        y = ops.batch_norm(x, None, None, w, b, True, activation=act, negative_slope=slope)
        if clone:  # another tensor than the batch norm's output: the conv keeps it as usual
            y = y.clone()
        return op(y, cw, None, stride=stride, padding=padding, activation="leaky_relu")

    return fn


@contextlib.contextmanager
def _watching_saved_tensors():
    """The tensors the nodes save, through a saved-tensor hook that leaves the recomputation on
    (under hooks it is off, see eager_autograd.h: test_conv_checkpointed_alone_after_a_batch_norm
    runs that)."""
    saved = []
    ext = genkern.ops._registry.extension()
    before = ext.set_recompute_under_saved_tensor_hooks(True)
    try:
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            yield saved
    finally:
        ext.set_recompute_under_saved_tensor_hooks(before)


def _saved_ptrs(fn, *args):
    with _watching_saved_tensors() as saved:
        out = fn(*args)
    return out, {t.data_ptr() for t in saved}


@pytest.mark.parametrize("conv", list(CONVS))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("act,slope,scale_low", BN_ACTS, ids=["relu", "identity", "leaky", "silu"])
def test_recomputed_input_gives_the_kept_inputs_bits(act, slope, scale_low, layout, conv):
    x, w, b = _inputs(torch.float32, layout, scale_low)
    cw = testing.make_tensor(CONVS[conv][2](16), torch.float32, "cpu", requires_grad=True)
    args = (x, w, b, cw)
    y_seen = []
    probe = genkern.ops.batch_norm

    def recording_bn(*a, **k):
        y = probe(*a, **k)
        y_seen.append(y.data_ptr())
        return y

    class Ops:  # genkern.ops with the batch norm's output recorded
        batch_norm = staticmethod(recording_bn)

    out, saved = _saved_ptrs(_chain(conv, act, slope, ops=Ops), *args)
    assert y_seen[0] not in saved and x.data_ptr() in saved
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, args, g)
    kept = torch.autograd.grad(_chain(conv, act, slope, clone=True)(*args), args, g)
    for i, (a, k) in enumerate(zip(grads, kept, strict=True)):
        assert torch.equal(a, k), f"gradient #{i} differs from the kept input's"
    with pytest.MonkeyPatch.context() as mp:  # the registered custom op: the same bits too
        mp.setattr(_fused, "FAST_EAGER", False)
        custom_op = torch.autograd.grad(_chain(conv, act, slope)(*args), args, g)
    for a, k in zip(grads, custom_op, strict=True):
        assert torch.equal(a, k)


@pytest.mark.parametrize("conv", list(CONVS))
@pytest.mark.parametrize("act,slope,scale_low", BN_ACTS, ids=["relu", "identity", "leaky", "silu"])
def test_recomputed_input_against_float64_reference(act, slope, scale_low, conv):
    x, w, b = _inputs(torch.float32, "channels_last", scale_low)
    cw = testing.make_tensor(CONVS[conv][2](16), torch.float32, "cpu", requires_grad=True)
    testing.check_against_reference(
        _chain(conv, act, slope),
        _chain(conv, act, slope, ops=reference),
        [x, w, b, cw],
        torch.float32,
        f"batch_norm({act}) -> {conv}",
    )


@pytest.mark.parametrize("conv", list(CONVS))
def test_recomputed_input_gradcheck_float64(conv):
    x, w, b = _inputs(torch.float64, "channels_last", 0.5, channels=3)
    cw = testing.make_tensor(CONVS[conv][2](3), torch.float64, "cpu", requires_grad=True)
    _, saved = _saved_ptrs(_chain(conv, "relu", 0.01), x, w, b, cw)
    assert x.data_ptr() in saved
    assert torch.autograd.gradcheck(_chain(conv, "relu", 0.01), (x, w, b, cw))


def test_output_changed_before_the_conv_is_kept_as_usual():
    """y modified in place between the batch norm and the conv: the conv keeps what it was given
    (autograd's version check then guards it), and the gradients are those of the changed y."""
    x, w, b = _inputs(torch.float32, "channels_last", 0.5)
    cw = testing.make_tensor(CONVS["conv2d"][2](16), torch.float32, "cpu", requires_grad=True)
    y = genkern.ops.batch_norm(x, None, None, w, b, True, activation="relu")
    y.mul_(2)
    _, saved = _saved_ptrs(lambda y: genkern.ops.conv2d(y, cw, None, 2, 1), y)
    assert y.data_ptr() in saved
    out = genkern.ops.conv2d(y, cw, None, 2, 1)  # (saved-tensor hooks skip the version check)
    ref = reference.conv2d(y.detach().double(), cw.detach().double(), None, 2, 1)
    testing.assert_close_to_reference(out, ref, torch.float32, "conv2d of a changed y")
    y.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_output_changed_after_the_conv_leaves_its_gradients_right():
    """y modified in place after the conv's forward: the conv did not keep y and recomputes the
    value its forward read, so the gradients are those of the forward that ran (no error)."""
    x, w, b = _inputs(torch.float32, "channels_last", 0.5)
    cw = testing.make_tensor(CONVS["conv2d"][2](16), torch.float32, "cpu", requires_grad=True)
    fn = _chain("conv2d", "relu", 0.01)
    g_clean = torch.autograd.grad(fn(x, w, b, cw), (w, cw), torch.ones(4, 6, 3, 3))
    y = genkern.ops.batch_norm(x, None, None, w, b, True, activation="relu")
    out = genkern.ops.conv2d(y, cw, None, 2, 1, activation="leaky_relu")
    with torch.no_grad():
        y.zero_()
    g = torch.autograd.grad(out, (w, cw), torch.ones_like(out))
    for a, c in zip(g, g_clean, strict=True):
        assert torch.equal(a, c)


def test_two_convs_reading_one_output_both_recompute():
    x, w, b = _inputs(torch.float32, "channels_last", 0.5)
    cw = testing.make_tensor(CONVS["conv2d"][2](16), torch.float32, "cpu", requires_grad=True)

    def fn(x, w, b, cw, clone=False):
        y = genkern.ops.batch_norm(x, None, None, w, b, True, activation="relu")
        y2 = y.clone() if clone else y
        return genkern.ops.conv2d(y2, cw, None, 2, 1) + genkern.ops.conv2d(y2, cw * 2, None, 2, 1)

    args = (x, w, b, cw)
    g = torch.randn(4, 6, 3, 3)
    for a, c in zip(
        torch.autograd.grad(fn(*args), args, g),
        torch.autograd.grad(fn(*args, clone=True), args, g),
        strict=True,
    ):
        assert torch.equal(a, c)


def test_dcgan_generator_keeps_one_tensor_per_batch_norm():
    """The generator's training forward keeps each BN + ReLU stage's conv output only (its
    batch norm's input), not also the BN output the next transposed conv reads."""
    g = models.DCGANGenerator(image_size=32).to(memory_format=torch.channels_last)
    z = torch.randn(4, 100)
    with _watching_saved_tensors() as saved:
        g(z)
    for shape in [(4, 256, 4, 4), (4, 128, 8, 8), (4, 64, 16, 16)]:
        ptrs = {t.data_ptr() for t in saved if tuple(t.shape) == shape}
        assert len(ptrs) == 1, f"{shape}: {len(ptrs)} tensors kept"


@pytest.mark.parametrize("conv", list(CONVS))
def test_eval_mode_batch_norm_output_is_recomputed_too(conv):
    """Frozen statistics (a fine-tuned net's eval-mode BN): y recomputed from the running ones."""
    x, w, b = _inputs(torch.float32, "channels_last", 0.5)
    rm, rv = torch.randn(16), torch.rand(16) + 0.5
    cw = testing.make_tensor(CONVS[conv][2](16), torch.float32, "cpu", requires_grad=True)
    op, _, _, (stride, padding) = CONVS[conv]

    def fn(x, w, b, cw, clone=False):
        y = genkern.ops.batch_norm(x, rm, rv, w, b, False, activation="relu")
        return op(y.clone() if clone else y, cw, None, stride=stride, padding=padding), y

    args = (x, w, b, cw)
    (out, y), saved = _saved_ptrs(fn, *args)
    assert y.data_ptr() not in saved
    g = torch.randn_like(out)
    kept = torch.autograd.grad(fn(*args, clone=True)[0], args, g)
    for a, k in zip(torch.autograd.grad(out, args, g), kept, strict=True):
        assert torch.equal(a, k)


def test_input_changed_after_the_batch_norm_is_not_recomputed_from():
    """The batch norm's graph freed, its input changed in place by its owner: the conv keeps y
    (a recomputation from the changed input would give another y)."""
    x, w, b = _inputs(torch.float32, "channels_last", 0.5)
    cw = testing.make_tensor(CONVS["conv2d"][2](16), torch.float32, "cpu", requires_grad=True)
    y = genkern.ops.batch_norm(x, None, None, w, b, True, activation="relu")
    y.sum().backward()  # frees the batch norm's graph and what it kept
    with torch.no_grad():
        x.mul_(2)
    _, saved = _saved_ptrs(lambda y: genkern.ops.conv2d(y, cw, None, 2, 1), y)
    assert y.data_ptr() in saved
    (g,) = torch.autograd.grad(genkern.ops.conv2d(y, cw, None, 2, 1).sum(), cw)
    (kept,) = torch.autograd.grad(genkern.ops.conv2d(y.detach().clone(), cw, None, 2, 1).sum(), cw)
    assert torch.equal(g, kept)


@pytest.mark.parametrize("reentrant", [False, True], ids=["non_reentrant", "reentrant"])
def test_recomputation_under_activation_checkpointing(reentrant):
    """torch.utils.checkpoint reruns the forward in the backward (the reruns' batch norm is
    remembered again) and, non-reentrant, matches the saved tensors by count: the same bits."""
    from torch.utils.checkpoint import checkpoint

    x, w, b = _inputs(torch.float32, "channels_last", 0.5)
    cw = testing.make_tensor(CONVS["conv2d"][2](16), torch.float32, "cpu", requires_grad=True)
    params = (x, w, b, cw)

    def block(x):
        y = genkern.ops.batch_norm(x, None, None, w, b, True, activation="relu")
        return genkern.ops.conv2d(y, cw, None, 2, 1, activation="relu")

    def grads(run):
        for p in params:
            p.grad = None
        run().square().sum().backward()
        return [p.grad.clone() for p in params]

    plain = grads(lambda: block(x))
    checkpointed = grads(lambda: checkpoint(block, x, use_reentrant=reentrant))
    for a, c in zip(checkpointed, plain, strict=True):
        assert torch.equal(a, c)


@pytest.mark.parametrize("reentrant", [False, True], ids=["non_reentrant", "reentrant"])
def test_conv_checkpointed_alone_after_a_batch_norm(reentrant):
    """Found by the fuzz: the conv alone checkpointed, its batch norm outside. Its forward took
    the batch norm's output (and kept x instead), its rerun a detached copy: the non-reentrant
    checkpoint counted 5 saved tensors against 2 and raised. Under saved-tensor hooks (which
    checkpoint and save_on_cpu install) a conv saves its input as usual."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    stock = torch.nn.Sequential(
        torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
    )
    ours = genkern.nn.convert(stock)
    x = torch.randn(2, 8, 6, 6)
    grads = []
    for m in (stock, ours):
        m[2](checkpoint(m[1], m[0](x), use_reentrant=reentrant)).square().mean().backward()
        grads.append([p.grad for p in m.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
