"""Backend selection: per call, use_backend(), GENKERN_BACKEND, auto; clear errors."""

import subprocess
import sys

import pytest
import torch

import genkern
from genkern import _ext, backends


def test_auto_picks_a_backend_for_the_device():
    name = backends.auto_backend("cpu")
    assert name in backends.available_backends("cpu")
    assert name == ("cpu" if "cpu" in backends.available_backends("cpu") else "torch")


def test_precedence_call_then_context_then_env(monkeypatch):
    monkeypatch.setenv("GENKERN_BACKEND", "torch")
    assert backends.requested_backend("auto") == "torch"
    with genkern.use_backend("cpu"):
        assert backends.requested_backend("auto") == "cpu"
        with genkern.use_backend("triton"):
            assert backends.requested_backend("auto") == "triton"
            assert backends.requested_backend("torch") == "torch"
        assert backends.requested_backend("auto") == "cpu"
    monkeypatch.delenv("GENKERN_BACKEND")
    assert backends.requested_backend("auto") == "auto"


def test_bad_names_raise_value_errors(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of 'auto', 'torch', 'cpu'"):
        with genkern.use_backend("opencl"):
            pass
    monkeypatch.setenv("GENKERN_BACKEND", "opencl")
    with pytest.raises(ValueError, match="GENKERN_BACKEND: backend must be one of"):
        backends.requested_backend("auto")


def test_context_manager_routes_calls(monkeypatch):
    calls = []
    original = backends._resolve

    def spy(op, name, *rest):
        calls.append(name)
        return original(op, name, *rest)

    monkeypatch.setattr(backends, "_resolve", spy)
    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    with genkern.use_backend("torch"):
        genkern.ops.conv2d(x, w)
    genkern.ops.conv2d(x, w, backend="torch")
    assert calls == ["torch", "torch"]


def test_unavailable_backend_says_why_and_what_is_available():
    with pytest.raises(RuntimeError, match=r"backend 'cuda' is not available .*Available here:"):
        backends.resolve("conv2d", "cuda", torch.empty(1))


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_integer_dtype_is_not_claimed(backend):
    reason = backends.unavailable_reason(backend, torch.device("cpu"), torch.int32)
    assert reason is not None


def test_resolution_is_marked_constant_as_torch_marks_it():
    # genkern sets the mark itself (importing torch._dynamo for it took 1-2 s of `import genkern`);
    # if torch changes what assume_constant_result records, this says so.
    def ours():
        pass

    def torchs():
        pass

    backends._assume_constant_result(ours)
    torch.compiler.assume_constant_result(torchs)
    assert vars(ours) == vars(torchs) != {}
    assert vars(backends._resolve_request).items() >= vars(torchs).items()


@pytest.mark.skipif(
    not _ext.HAS_CPU,
    reason="a pure-Python install: its calls go through torch's custom-op dispatch, which "
    "imports torch._dynamo",
)
def test_import_and_eager_calls_load_neither_dynamo_nor_triton():
    code = (
        "import sys, torch, genkern\n"
        "x = torch.randn(2, 3, 8, 8, requires_grad=True)\n"
        "w = torch.randn(4, 3, 3, 3, requires_grad=True)\n"
        "genkern.ops.conv2d(x, w, None, padding=1, activation='relu').sum().backward()\n"
        "genkern.ops.generator_loss(torch.randn(5, requires_grad=True)).backward()\n"
        "print(sorted(m for m in ('torch._dynamo', 'triton', 'sympy') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_an_extension_that_does_not_load_is_named_in_the_warning():
    # found by a fuzz: Python's own error for a missing genkern._C blames a circular import, and
    # that text went into the warning and every "backend not available" error
    code = (
        "import importlib.abc, importlib.machinery, sys, warnings\n"
        "class Broken(importlib.abc.MetaPathFinder, importlib.abc.Loader):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'genkern._C':\n"
        "            return importlib.machinery.ModuleSpec(name, self)\n"
        "    def create_module(self, spec):\n"
        "        raise ImportError('undefined symbol: _ZN3c10')\n"
        "    def exec_module(self, module):\n"
        "        pass\n"
        "sys.meta_path.insert(0, Broken())\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import genkern\n"
        "print(genkern._ext.HAS_CPU)\n"
        "print([str(w.message) for w in caught if 'genkern._C' in str(w.message)][0])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    has_cpu, message = out.stdout.strip().splitlines()
    assert has_cpu == "False"
    assert "it is there but does not load: undefined symbol: _ZN3c10" in message
    assert "circular" not in message and "pip install --no-build-isolation ." in message
