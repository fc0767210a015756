"""Special values, no mutation, determinism: every op (tests/_strategies.OP_CASES) on every
backend available here.

- NaN and inf in the inputs propagate to the outputs and gradients exactly as in the composite
  (genkern.reference, in float64): the same NaN positions, the same infinities.
  Deliberate differences (documented in README.md, "Special values"): the fused losses give the
  finite limit for infinite logits where it exists (stock BCE-with-logits gives NaN), and their
  target gradient of BCE on probabilities is the derivative of the clamped logs the forward uses.
- No mutation: inputs, and grad_output, are bit-identical after forward and backward (running
  statistics are updated in place in training, as torch; tested in tests/test_batch_norm.py).
- Determinism: two runs give bit-identical outputs and gradients on CPU, at 2 threads with sizes
  that split across them.
"""

import math

import _strategies as S
import pytest
import torch
from conftest import device_backends, needs_cpu_backend

import genkern
from genkern import reference, testing
from genkern.ops import _prepacked

BACKENDS = device_backends(torch.float32)
CASES = list(S.OP_CASES)


def _grads(out, inputs, seed=1):
    outs = out if isinstance(out, (tuple, list)) else (out,)
    g = torch.Generator().manual_seed(seed)
    gos = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype) for o in outs]
    wrt = [t for t in inputs if t.requires_grad]
    return list(torch.autograd.grad(outs, wrt, gos, allow_unused=True)), gos


def _inject(inputs, g, nan=True, inf=True):
    """NaN and +-inf at random positions of the first input (the data tensor)."""
    x = inputs[0].detach().clone()
    flat = x.view(-1)
    n = flat.numel()
    idx = torch.randperm(n, generator=g)[: max(3, n // 10)]
    if nan:
        flat[idx[0]] = float("nan")
    if inf:
        flat[idx[1]] = float("inf")
        flat[idx[2]] = float("-inf")
    return [x.requires_grad_(inputs[0].requires_grad), *inputs[1:]]


# Cases whose composite gives NaN where genkern gives the finite limit (deliberately better).
LIMIT_CASES = {"vae_loss_bce_logits"}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("what", ["nan", "inf", "nan+inf"])
def test_nan_and_inf_propagate_like_the_composite(case, backend, what):
    g = torch.Generator().manual_seed(7)
    inputs, call, ref = S.OP_CASES[case](torch.float32, False, g)
    inputs = _inject(inputs, g, nan="nan" in what, inf="inf" in what)
    if case == "vae_loss_bce_probs":
        # torch raises for probabilities outside [0, 1] (NaN included); genkern raises for inf on
        # the CPU (its kernel and the torch composite check in their pass), and NaN propagates;
        # the GPU kernels return NaN for both (no data-dependent check, no device sync)
        with pytest.raises(RuntimeError, match="should be between 0 and 1"):
            ref(*[t.detach() for t in inputs])
        recon = inputs[0].detach()
        outside = bool(((recon < 0) | (recon > 1)).any())
        if outside and recon.device.type == "cpu" and backend in ("cpu", "torch"):
            with pytest.raises(RuntimeError, match="should be between 0 and 1"):
                call(backend, *inputs)
        else:
            assert torch.isnan(call(backend, *inputs)).all()
        return
    out = call(backend, *inputs)
    ref_in = [testing.as_reference(t) for t in inputs]
    expected = ref(*ref_in)
    outs = out if isinstance(out, tuple) else (out,)
    exps = expected if isinstance(expected, tuple) else (expected,)
    if case in LIMIT_CASES and what != "nan":
        return  # tested against the limit below
    for o, e in zip(outs, exps):
        testing.assert_close_to_reference(o, e, torch.float32, f"{case} forward")
    grads, gos = _grads(out, inputs)
    ref_grads = torch.autograd.grad(
        exps,
        [t for t in ref_in if t.requires_grad],
        [go.double() for go in gos],
        allow_unused=True,
    )
    for i, (a, e) in enumerate(zip(grads, ref_grads)):
        testing.assert_close_to_reference(a, e, torch.float32, f"{case} grad #{i}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["bce", "hinge", "wgan", "lsgan"])
def test_gan_losses_at_infinite_logits(backend, kind):
    """Correct where the limit exists: +inf real logits cost nothing for bce/hinge."""
    inf = float("inf")
    real = torch.tensor([inf, 0.5, 2.0], requires_grad=True)
    fake = torch.tensor([-inf, -0.5], requires_grad=True)
    loss = genkern.ops.discriminator_loss(real, fake, kind, backend=backend)
    expected = reference.discriminator_loss(real.detach().double(), fake.detach().double(), kind)
    assert (
        (loss.double() == expected)
        or abs(loss.item() - expected.item()) < 1e-6
        or (math.isinf(expected.item()) and loss.item() == expected.item())
    ), (loss, expected)
    if kind in ("bce", "hinge"):
        gr, gf = torch.autograd.grad(loss, [real, fake])
        assert torch.isfinite(gr).all() and torch.isfinite(gf).all()
        assert gr[0] == 0 and gf[0] == 0


@needs_cpu_backend
def test_cpu_tanh_within_2_ulp_of_float64():
    """The CPU's float32 tanh (exp_math.h's tanh_full, not ATen's) on a dense sweep of [-12, 12],
    tiny values, the 0.625 switch between its two formulas, +-1e4, +-inf and NaN: within 2 ulp of
    float64's, odd, NaN where the input is NaN. The channels_last 1x1 conv (two equal channels,
    weights 0.5) is exactly the identity before the activation."""
    special = [0.625, -0.625, 0.62499994, 0.62500006, 1e-30, -1e-38, 1e-4, 9.01, 20.0, 89.0]
    special += [1e4, -1e4, float("inf"), -float("inf"), float("nan")]
    x = torch.cat([torch.linspace(-12, 12, 400_001), torch.linspace(-1e-3, 1e-3, 1001)])
    x = torch.cat([x, torch.tensor(special)]).view(1, 1, 1, -1).expand(1, 2, 1, -1)
    x = x.contiguous(memory_format=torch.channels_last)  # (NCHW runs oneDNN's fused tanh)
    one = torch.full((2, 2, 1, 1), 0.5)
    # not the packed oneDNN weight, whose tanh post-op is oneDNN's (1.2 ulp toward saturation):
    # auto times it against genkern's kernels on the first call, and a loaded machine let it win
    with _prepacked.mode("never"):
        y = genkern.ops.conv2d(x, one, None, 1, 0, activation="tanh", backend="cpu")
    x, y = x[0, 0, 0].double(), y[0, 0, 0]
    expected = torch.tanh(x)
    assert torch.equal(torch.isnan(y), torch.isnan(expected))
    finite = ~torch.isnan(expected)
    ulp = torch.nextafter(y.abs(), torch.tensor(float("inf"))) - y.abs()
    err = (y.double() - expected).abs()[finite] / ulp.double()[finite]
    assert err.max() <= 2, (err.max(), x[finite][err.argmax()])
    # toward saturation, where the gradient 1 - y^2 magnifies y's error: one rounding of
    # 1 - 2e / (1 + e) (found by the fuzz: (1 - e) / (1 + e) gave 1.5 ulp there)
    assert err[x[finite].abs() >= 2].max() <= 0.7
    assert torch.equal(y[x > 0].sign(), torch.ones_like(y[x > 0]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_vae_bce_logits_finite_limit_for_infinite_logits(backend):
    """Stock BCE-with-logits gives NaN at logit +inf and target 1; genkern gives the limit 0."""
    inf = float("inf")
    recon = torch.tensor([[inf, -inf, inf, -inf]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    mu, logvar = torch.zeros(1, 2), torch.zeros(1, 2)
    stock = torch.nn.functional.binary_cross_entropy_with_logits(
        recon[:, :1].detach(), target[:, :1], reduction="sum"
    )
    assert torch.isnan(stock)  # what genkern improves on
    total, rec, kl = genkern.ops.vae_loss(
        recon[:, :2], target[:, :2], mu, logvar, return_components=True, backend=backend
    )
    assert rec.item() == 0.0 and kl.item() == 0.0
    (g,) = torch.autograd.grad(total, recon)
    assert torch.equal(g[:, :2], torch.zeros(1, 2))
    wrong = genkern.ops.vae_loss(recon[:, 2:], target[:, 2:], mu, logvar, backend=backend)
    assert wrong.item() == inf  # a confident wrong answer costs infinitely much


@pytest.mark.parametrize("backend", BACKENDS)
def test_vae_bce_probabilities_target_gradient_at_0_and_1(backend):
    """logits=False clamps the logs at -100 (as torch's forward): genkern's target gradient is
    the derivative of that clamped loss, +-100, where torch's is +-inf."""
    recon = torch.tensor([[0.0, 1.0]])
    target = torch.tensor([[0.5, 0.5]], requires_grad=True)
    z = torch.zeros(1, 1)
    loss = genkern.ops.vae_loss(recon, target, z, z, logits=False, backend=backend)
    assert loss.item() == pytest.approx(100.0)
    (g,) = torch.autograd.grad(loss, target)
    assert torch.equal(g, torch.tensor([[100.0, -100.0]]))


# ---- no mutation ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_inputs_and_grad_output_are_never_modified(case, backend):
    g = torch.Generator().manual_seed(3)
    inputs, call, _ = S.OP_CASES[case](torch.float32, False, g)
    before = [t.detach().clone() for t in inputs]
    out = call(backend, *inputs)
    outs = out if isinstance(out, tuple) else (out,)
    gos = [torch.randn(o.shape, dtype=o.dtype) for o in outs]
    gos_before = [t.clone() for t in gos]
    torch.autograd.grad(outs, [t for t in inputs if t.requires_grad], gos, allow_unused=True)
    for i, (b, a) in enumerate(zip(before, inputs)):
        assert torch.equal(b, a.detach()), f"{case}[{backend}]: input #{i} was modified"
    for i, (b, a) in enumerate(zip(gos_before, gos)):
        assert torch.equal(b, a), f"{case}[{backend}]: grad_output #{i} was modified"


# ---- determinism ---------------------------------------------------------------------------


@pytest.fixture
def two_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_repeated_runs_are_bit_identical(case, backend, two_threads):
    big = backend != "triton"  # the interpreter: small sizes (it runs one program at a time)
    results = []
    for _ in range(2):
        g = torch.Generator().manual_seed(5)
        inputs, call, _ = S.OP_CASES[case](torch.float32, big, g)
        out = call(backend, *inputs)
        grads, _ = _grads(out, inputs)
        outs = out if isinstance(out, tuple) else (out,)
        results.append([o.detach() for o in outs] + [gr for gr in grads if gr is not None])
    for i, (a, b) in enumerate(zip(*results)):
        assert torch.equal(a, b), f"{case}[{backend}]: result #{i} differs between runs"


# ---- atomics and torch.use_deterministic_algorithms ----------------------------------------

_ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_no_kernel_uses_atomics():
    """genkern's own GPU kernels (CUDA and Triton) are deterministic by construction: no atomics
    (fixed-order reductions, gather backwards). A kernel that adds one must honour
    torch.are_deterministic_algorithms_enabled() (a deterministic path, or torch's error) and be
    listed in README.md ("Determinism"); this test then lists it here."""
    allowed: dict[str, str] = {}  # file -> how it honours use_deterministic_algorithms
    pattern = __import__("re").compile(r"\batomic[A-Z_]\w*|\btl\.atomic_\w+")
    found = []
    sources = [*(_ROOT / "csrc").rglob("*.cu"), *(_ROOT / "csrc").rglob("*.cuh")]
    sources += [*(_ROOT / "genkern" / "triton").glob("*.py")]
    for path in sources:
        for m in pattern.finditer(path.read_text()):
            if path.name not in allowed:
                found.append(f"{path.relative_to(_ROOT)}: {m.group(0)}")
    assert not found, found


@pytest.mark.parametrize("backend", BACKENDS)
def test_ops_run_under_use_deterministic_algorithms(backend):
    """Every op runs (and repeats bit-identically) with torch.use_deterministic_algorithms(True):
    no genkern kernel needs to refuse it."""
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for case in CASES:
            runs = []
            for _ in range(2):
                g = torch.Generator().manual_seed(11)
                inputs, call, _ = S.OP_CASES[case](torch.float32, False, g)
                out = call(backend, *inputs)
                grads, _ = _grads(out, inputs)
                outs = out if isinstance(out, tuple) else (out,)
                runs.append([o.detach() for o in outs] + [x for x in grads if x is not None])
            assert all(torch.equal(a, b) for a, b in zip(*runs)), case
    finally:
        torch.use_deterministic_algorithms(old)
