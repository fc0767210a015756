"""Buffer reuse inside genkern's eager CPU ops (csrc/cpu/reuse_allocator.h, GENKERN_CPU_REUSE):
large allocations inside the ops' fast entries and backward nodes come from a cache of freed
blocks; everything else passes through to torch's allocator. Results must not depend on it, the
profiler must see every block, and off means off."""

import threading

import pytest
import torch

import genkern
from genkern import _ext, backends
from genkern.bench.memory import peak_memory_mb
from genkern.ops import _fused, _reuse

pytestmark = pytest.mark.skipif(
    backends.unavailable_reason("cpu", torch.device("cpu"), torch.float32) is not None,
    reason="the C++ extension genkern._C is not built",
)


def _layer_step(x, w, b):
    """A conv + linear forward and backward on the fast paths: outputs of 256 KB and more."""
    y = genkern.ops.conv2d(x, w, b, padding=1, activation="relu", backend="cpu")
    out = genkern.ops.linear(y.flatten(1), torch.ones(4, y[0].numel()), backend="cpu")
    return torch.autograd.grad(out.square().sum(), (x, w, b))


def _inputs():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 16, 32, 32, generator=gen).requires_grad_()
    w = (torch.randn(32, 16, 3, 3, generator=gen) * 0.1).requires_grad_()
    b = torch.randn(32, generator=gen).requires_grad_()
    return x, w, b


@pytest.fixture
def fresh_cache():
    _reuse.empty_cache()
    yield
    _reuse.empty_cache()


def test_steps_reuse_blocks_and_give_the_same_results(fresh_cache, monkeypatch):
    monkeypatch.setattr(_fused, "FAST_EAGER", True)
    x, w, b = _inputs()
    with _reuse.mode("never"):
        expected = _layer_step(x, w, b)
        assert _reuse.cached_bytes() == 0
    first = _layer_step(x, w, b)
    assert _reuse.cached_bytes() > 0  # the step's temporaries came back to the cache
    live = _ext._C.reuse_live_bytes()
    second = _layer_step(x, w, b)
    for e, r1, r2 in zip(expected, first, second):
        assert torch.equal(e, r1) and torch.equal(e, r2)
    del first, second
    assert _ext._C.reuse_live_bytes() <= live


def test_allocations_outside_genkern_ops_pass_through(fresh_cache):
    before = _reuse.cached_bytes()
    t = torch.empty(1 << 20)
    t.fill_(1.0)
    del t
    assert _reuse.cached_bytes() == before


def test_the_profiler_sees_every_block(fresh_cache):
    x, w, b = _inputs()
    _layer_step(x, w, b)  # warm the cache: the measured step reuses blocks
    with _reuse.mode("never"):
        plain = peak_memory_mb(lambda: _layer_step(x, w, b), torch.device("cpu"))
    reused = peak_memory_mb(lambda: _layer_step(x, w, b), torch.device("cpu"))
    assert reused == pytest.approx(plain, rel=0.05)


def test_never_empties_the_cache_and_bypasses_it(fresh_cache):
    x, w, b = _inputs()
    _layer_step(x, w, b)
    assert _reuse.cached_bytes() > 0
    with _reuse.mode("never"):
        assert _reuse.cached_bytes() == 0
        _layer_step(x, w, b)
        assert _reuse.cached_bytes() == 0
    assert genkern.empty_cpu_cache() == 0


def test_blocks_freed_on_another_thread_come_back(fresh_cache):
    x, w, b = _inputs()
    grads = list(_layer_step(x, w, b))
    cached = _reuse.cached_bytes()
    worker = threading.Thread(target=grads.clear)
    worker.start()
    worker.join()
    assert _reuse.cached_bytes() > cached


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="buffer reuse mode must be one of"):
        _reuse.set_mode("sometimes")
