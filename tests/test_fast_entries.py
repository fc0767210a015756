"""The optimistic C++ entries of the eager fast paths (csrc/cpu/fast_entry.h): each runs the common
case and declines (returns None) everything else, which the ops' Python path then validates and
dispatches. What they run is compared with the custom ops in tests/test_eager_paths.py and here
(pooling with gradients); what they must decline is one table below."""

import threading

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import genkern
from genkern import backends
from genkern.ops import _fused

pytestmark = pytest.mark.skipif(
    backends.unavailable_reason("cpu", torch.device("cpu"), torch.float32) is not None,
    reason="the C++ extension genkern._C is not built",
)


def _c():
    return genkern._ext._C


def _t(*shape, dtype=torch.float32, grad=False):
    t = torch.randn(*shape, dtype=dtype)
    return t.requires_grad_() if grad else t


class _Sub(torch.Tensor):
    pass


# (name, the entry called with the public op's arguments and backend; `**kw` overrides one)
def _linear(backend="auto", **kw):
    a = dict(x=_t(4, 5), w=_t(3, 5), b=_t(3), act="relu", slope=0.01)
    a.update(kw)
    return _c().linear_fast(a["x"], a["w"], a["b"], a["act"], a["slope"], backend)


def _conv(backend="auto", **kw):
    a = dict(x=_t(2, 3, 6, 6), w=_t(4, 3, 3, 3), b=_t(4), stride=1, padding=1, dilation=1)
    a.update(kw)
    return _c().conv2d_fast(
        a["x"],
        a["w"],
        a["b"],
        a["stride"],
        a["padding"],
        a["dilation"],
        1,
        None,
        0.01,
        backend,
    )


def _conv_t(backend="auto", **kw):
    a = dict(x=_t(2, 4, 5, 5), w=_t(4, 3, 4, 4), stride=2, output_padding=0)
    a.update(kw)
    return _c().conv_transpose2d_fast(
        a["x"],
        a["w"],
        None,
        a["stride"],
        1,
        a["output_padding"],
        1,
        1,
        "tanh",
        0.01,
        backend,
    )


def _bn(backend="auto", **kw):
    a = dict(x=_t(4, 3, 2, 2), rm=torch.zeros(3), rv=torch.ones(3), training=True, momentum=0.1)
    a.update(kw)
    return _c().batch_norm_fast(
        a["x"],
        a["rm"],
        a["rv"],
        None,
        None,
        a["training"],
        a["momentum"],
        1e-5,
        None,
        0.01,
        backend,
    )


def _max_pool(backend="auto", **kw):
    a = dict(x=_t(2, 3, 6, 6), kernel=2, stride=None, padding=0)
    a.update(kw)
    return _c().max_pool2d_fast(
        a["x"], a["kernel"], a["stride"], a["padding"], 1, False, False, a.get("act"), 0.01, backend
    )


def _avg_pool(backend="auto", **kw):
    a = dict(x=_t(2, 3, 6, 6), divisor=None)
    a.update(kw)
    return _c().avg_pool2d_fast(a["x"], 2, None, 0, False, True, a["divisor"], backend)


def _gan(backend="auto", **kw):
    a = dict(real=_t(8), fake=_t(8), kind="hinge")
    a.update(kw)
    return _c().gan_loss_fast(a["real"], a["fake"], a["kind"], True, backend)


def _vae(backend="auto", **kw):
    a = dict(recon=_t(2, 6), target=torch.rand(2, 6), beta=1.0, reduction="sum")
    a.update(kw)
    return _c().vae_loss_fast(
        a["recon"],
        a["target"],
        _t(2, 3),
        _t(2, 3),
        "bce",
        a["beta"],
        a["reduction"],
        True,
        False,
        backend,
    )


def _reparam(backend="auto", **kw):
    a = dict(mu=_t(4, 3), eps=None, generator=None)
    a.update(kw)
    return _c().reparameterize_fast(a["mu"], _t(4, 3), a["eps"], a["generator"], backend)


ENTRIES = [_linear, _conv, _conv_t, _bn, _max_pool, _avg_pool, _gan, _vae, _reparam]


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.__name__[1:])
def test_entry_runs_the_common_case(entry):
    assert isinstance(entry(), torch.Tensor)
    assert isinstance(entry("cpu"), torch.Tensor)


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.__name__[1:])
@pytest.mark.parametrize("backend", ["torch", "triton", "cuda", "bogus", 3])
def test_entry_declines_other_backends(entry, backend):
    assert entry(backend) is None


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.__name__[1:])
@pytest.mark.parametrize("env,taken", [("torch", False), (" cpu ", True), ("auto", True)])
def test_entry_follows_genkern_backend(entry, env, taken, monkeypatch):
    monkeypatch.setenv("GENKERN_BACKEND", env)
    assert (entry() is not None) == taken


class _Mode(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


class _FunctionMode(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.__name__[1:])
def test_entry_declines_modes_and_transforms(entry):
    with _Mode():
        assert entry() is None
    with _FunctionMode():
        assert entry() is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert entry() is None
    seen = []
    torch.func.grad(lambda s: (seen.append(entry()), s.sum())[1])(torch.ones(2))
    assert seen == [None]
    # torch.jit.trace records the custom ops; a forward-AD level leaves tangents to the Python
    # path's check (both were Python checks before every entry: ~0.3 us a call)
    torch.jit.trace(lambda s: (seen.append(entry()), s * 2)[1], torch.ones(2), check_trace=False)
    assert seen == [None, None]
    with torch.autograd.forward_ad.dual_level():
        assert entry() is None
    assert entry() is not None


# The uncommon calls each entry leaves to the Python path (one row each; the Python path
# validates them with torch's wording or runs them through the custom ops).
DECLINED = [
    ("linear subclass input", lambda: _linear(x=_t(4, 5).as_subclass(_Sub))),
    ("linear bfloat16", lambda: _linear(x=_t(4, 5, dtype=torch.bfloat16))),
    ("linear dtype mismatch", lambda: _linear(w=_t(3, 5, dtype=torch.float64))),
    ("linear 0-d input", lambda: _linear(x=torch.tensor(1.0))),
    ("linear shape mismatch", lambda: _linear(x=_t(4, 6))),
    ("linear bias size", lambda: _linear(b=_t(4))),
    ("linear unknown activation", lambda: _linear(act="gelu")),
    ("linear bool slope", lambda: _linear(slope=True)),
    ("linear empty batch", lambda: _linear(x=_t(0, 5))),
    ("linear integer input", lambda: _linear(x=torch.ones(4, 5, dtype=torch.int64))),
    ("linear non-tensor", lambda: _linear(x=[[1.0] * 5])),
    ("conv 3-d input", lambda: _conv(x=_t(3, 6, 6))),
    ("conv padding string", lambda: _conv(padding="same")),
    ("conv zero stride", lambda: _conv(stride=0)),
    ("conv negative padding", lambda: _conv(padding=-1)),
    ("conv 3-tuple stride", lambda: _conv(stride=(1, 1, 1))),
    ("conv kernel too large", lambda: _conv(x=_t(2, 3, 1, 1), padding=0)),
    ("conv channel mismatch", lambda: _conv(x=_t(2, 5, 6, 6))),
    ("conv_t output_padding", lambda: _conv_t(output_padding=2)),
    ("conv_t channel mismatch", lambda: _conv_t(x=_t(2, 3, 5, 5))),
    ("bn 1 value per channel", lambda: _bn(x=_t(1, 3, 1, 1))),
    ("bn eval without stats", lambda: _bn(training=False, rm=None)),
    ("bn momentum None", lambda: _bn(momentum=None)),
    ("bn stats requiring grad", lambda: _bn(rm=torch.zeros(3, requires_grad=True))),
    ("bn stats size", lambda: _bn(rv=torch.ones(4))),
    ("bn training not a bool", lambda: _bn(training=1)),
    ("max_pool pad > half kernel", lambda: _max_pool(padding=2)),
    ("max_pool output too small", lambda: _max_pool(x=_t(2, 3, 1, 1))),
    ("max_pool empty stride list", lambda: _max_pool(stride=[])),
    ("max_pool empty channels", lambda: _max_pool(x=_t(2, 0, 6, 6))),
    ("max_pool unknown activation", lambda: _max_pool(act="gelu")),
    ("avg_pool zero divisor", lambda: _avg_pool(divisor=0)),
    ("avg_pool float divisor", lambda: _avg_pool(divisor=2.0)),
    ("gan unknown kind", lambda: _gan(kind="bc")),
    ("gan dtype mismatch", lambda: _gan(real=_t(8, dtype=torch.float64))),
    ("vae shape mismatch", lambda: _vae(target=torch.rand(2, 5))),
    ("vae bool beta", lambda: _vae(beta=True)),
    (
        "vae mean of a 0-d recon",
        lambda: _vae(recon=_t(()), target=torch.rand(()), reduction="mean"),
    ),
    ("vae unknown reduction", lambda: _vae(reduction="none")),
    ("reparameterize eps shape", lambda: _reparam(eps=_t(3, 4))),
    ("reparameterize generator type", lambda: _reparam(generator=3)),
    ("reparameterize float64 mu", lambda: _reparam(mu=_t(4, 3, dtype=torch.float64))),
]


@pytest.mark.parametrize("call", [c for _, c in DECLINED], ids=[n for n, _ in DECLINED])
def test_entry_declines_uncommon_calls(call):
    assert call() is None


def _linear_entry_ran(x, w, backend="auto"):
    return "CppNode" in genkern.ops.linear(x, w, backend=backend).grad_fn.name()


def test_use_backend_contexts_are_honoured():
    x, w = _t(4, 5, grad=True), _t(3, 5, grad=True)
    assert _linear_entry_ran(x, w)
    with genkern.use_backend("torch"):
        assert not _linear_entry_ran(x, w)
        assert _linear_entry_ran(x, w, backend="cpu")  # the call's own argument wins
        with genkern.use_backend("cpu"):
            assert _linear_entry_ran(x, w)
            with genkern.use_backend("auto"):  # "auto" defers to GENKERN_BACKEND, then auto
                assert _linear_entry_ran(x, w)
        assert not _linear_entry_ran(x, w)
    assert _linear_entry_ran(x, w)


def test_use_backend_context_is_per_thread_and_survives_errors():
    x, w = _t(4, 5, grad=True), _t(3, 5, grad=True)
    seen = []
    with genkern.use_backend("torch"):
        worker = threading.Thread(target=lambda: seen.append(_linear_entry_ran(x, w)))
        worker.start()
        worker.join()
        assert not _linear_entry_ran(x, w)
    assert seen == [True]  # another thread's context does not reach this one
    with pytest.raises(RuntimeError, match="boom"), genkern.use_backend("torch"):
        raise RuntimeError("boom")
    assert _linear_entry_ran(x, w)


POOL_GRAD_CALLS = [
    ("max_pool2d", lambda x: genkern.ops.max_pool2d(x, 3, 2, 1, ceil_mode=True)),
    ("max_pool2d_indices", lambda x: genkern.ops.max_pool2d(x, 2, return_indices=True)),
    ("max_pool2d_relu", lambda x: genkern.ops.max_pool2d(x, 2, activation="relu")),
    # windows that do not overlap keep tap codes in channels_last: clipped ones, and gaps
    ("max_pool2d_ceil_tiled", lambda x: genkern.ops.max_pool2d(x, 2, ceil_mode=True)),
    ("max_pool2d_gaps", lambda x: genkern.ops.max_pool2d(x, (2, 1), (3, 2))),
    (  # the activation's backward reads the pooled values before it
        "max_pool2d_leaky_negative",
        lambda x: genkern.ops.max_pool2d(x, 2, activation="leaky_relu", negative_slope=-0.1),
    ),
    ("avg_pool2d", lambda x: genkern.ops.avg_pool2d(x, 3, 2, 1, count_include_pad=False)),
    ("upsample_nearest2d", lambda x: genkern.ops.upsample_nearest2d(x, 2)),
    ("upsample_nearest2d_size", lambda x: genkern.ops.upsample_nearest2d(x, size=(11, 9))),
    ("avg_pool2d_divisor", lambda x: genkern.ops.avg_pool2d(x, 2, divisor_override=3)),
]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("name,call", POOL_GRAD_CALLS, ids=[c[0] for c in POOL_GRAD_CALLS])
def test_pool_autograd_entry_matches_custom_op(name, call, layout, monkeypatch):
    base = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    if layout == "channels_last":
        base = base.to(memory_format=torch.channels_last)
    results = {}
    for fast in (True, False):
        monkeypatch.setattr(_fused, "FAST_EAGER", fast)
        x = base.clone().requires_grad_()
        out = call(x)
        outs = out if isinstance(out, tuple) else (out,)
        outs[0].backward(torch.linspace(-1, 1, outs[0].numel(), dtype=x.dtype).view_as(outs[0]))
        results[fast] = (*outs, x.grad)
        assert ("CppNode" in outs[0].grad_fn.name()) == fast
    for a, b in zip(results[True], results[False], strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride()
        assert torch.equal(a, b)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_max_pool_autograd_entry_peaks_as_the_custom_op(layout, monkeypatch):
    """The C++ Function's forward + backward allocates no more than the custom op's: no
    zero-filled gradient for the int64 indices (an earlier version of it had one)."""
    from genkern.bench.memory import peak_memory_mb

    x = torch.randn(8, 16, 32, 32)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    g = torch.randn(8, 16, 16, 16)
    peaks = {}
    for fast in (True, False):
        monkeypatch.setattr(_fused, "FAST_EAGER", fast)
        run = lambda: torch.autograd.grad(genkern.ops.max_pool2d(x, 2), x, g)  # noqa: E731
        run()
        peaks[fast] = peak_memory_mb(run, x.device)
    assert peaks[True] <= peaks[False], peaks


@pytest.mark.parametrize(
    "layout,kw,kept",
    [
        ("channels_last", {}, torch.uint8),  # windows that do not overlap: tap codes
        ("channels_last", {"return_indices": True}, torch.int64),  # the caller's: torch's
        ("channels_last", {"padding": 1}, torch.int64),  # windows over padding
        ("channels_last", {"stride": 1}, torch.int64),  # overlapping windows
        ("contiguous", {}, torch.int64),
    ],
    ids=["tiled", "returned", "padded", "overlapping", "nchw"],
)
def test_max_pool_autograd_entry_keeps_tap_codes_where_they_apply(layout, kw, kept):
    """What the C++ Function keeps of the maxima for the backward: one byte per output where
    each maximum's tap number identifies it, torch's int64 indices elsewhere."""
    x = torch.randn(2, 8, 6, 6)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = genkern.ops.max_pool2d(x, 2, **kw)
    y = out[0] if isinstance(out, tuple) else out
    assert "CppNode" in y.grad_fn.name()
    assert [t.dtype for t in saved if t.dtype != x.dtype] == [kept]
    if isinstance(out, tuple):
        assert out[1].dtype == torch.int64
