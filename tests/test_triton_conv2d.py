"""The Triton backend of genkern.ops.conv2d against the float64 reference.

Runs on CUDA, or on CPU under the Triton interpreter (TRITON_INTERPRET=1, set by conftest when
there is no GPU); shapes are tiny so the interpreter gets through the module quickly.
"""

import pytest
import torch
import torch.nn.functional as F
from _helpers import check_against_reference_unmodified
from conftest import DEVICE

import genkern
from genkern import backends, reference, testing

pytestmark = pytest.mark.triton

_REASON = backends.unavailable_reason("triton", torch.device(DEVICE), torch.float32)
if _REASON is not None:
    pytest.skip(f"the Triton backend cannot run here: {_REASON}", allow_module_level=True)

import triton  # noqa: E402  (only once the backend is known to run)
import triton.language as tl  # noqa: E402

from genkern import activations as A  # noqa: E402
from genkern.triton.activations import act_backward, act_forward  # noqa: E402

ACTIVATIONS = [
    (None, 0.01),
    ("relu", 0.01),
    ("leaky_relu", 0.2),
    ("leaky_relu", -0.1),  # negative slope: the backward reads the pre-activation
    ("tanh", 0.01),
    ("sigmoid", 0.01),
    ("silu", 0.01),
]
# (N, C, H, W, OC, kernel, stride, padding, dilation, groups, bias)
SHAPES = [
    (2, 3, 9, 7, 5, 3, 1, 1, 1, 1, True),  # odd H/W, channels not a multiple of 8
    (1, 4, 8, 8, 6, 4, 2, 1, 1, 1, False),  # batch 1, DCGAN-style 4x4 s2 p1
    (2, 6, 7, 9, 4, 3, 2, 0, 2, 2, True),  # groups and dilation
    (2, 5, 6, 6, 7, 1, 1, 0, 1, 1, True),  # 1x1 kernel
    (2, 3, 10, 11, 4, 2, 3, 0, 1, 1, True),  # stride 3 > kernel
    (2, 4, 5, 5, 4, 3, 1, "same", 1, 4, True),  # depthwise, padding "same"
    (1, 2, 9, 8, 3, 4, 1, "same", 2, 1, False),  # even kernel, dilated "same": asymmetric
    (2, 3, 6, 6, 2, (3, 1), (2, 1), (1, 0), 1, 1, True),  # rectangular everything
]


@pytest.fixture(autouse=True)
def _ieee_fp32():
    """fp32 to fp32 tolerances: no TF32 on GPU (the kernels follow cudnn.allow_tf32)."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = before


def _case_id(case):
    return "x".join(str(v) for v in case)


def _make(case, dtype=torch.float32, layout="contiguous", requires_grad=(True, True, True),
          weight_layout="contiguous"):  # fmt: skip
    n, c, h, w, oc, k, stride, padding, dilation, groups, bias = case
    kh, kw = (k, k) if isinstance(k, int) else k
    x = testing.make_tensor([n, c, h, w], dtype, DEVICE, layout, requires_grad[0])
    wt = testing.make_tensor([oc, c // groups, kh, kw], dtype, DEVICE, weight_layout,
                             requires_grad[1])  # fmt: skip
    b = testing.make_tensor([oc], dtype, DEVICE, "contiguous", requires_grad[2]) if bias else None
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return (x, wt, b), kwargs


def _fns(kw, act, slope):
    fn = lambda x, w, b: genkern.ops.conv2d(x, w, b, **kw, activation=act, negative_slope=slope,
                                            backend="triton")  # fmt: skip
    ref = lambda x, w, b: reference.conv2d(x, w, b, **kw, activation=act, negative_slope=slope)
    return fn, ref


def _check(case, act, slope, layout="contiguous", requires_grad=(True, True, True),
           weight_layout="contiguous"):  # fmt: skip
    inputs, kw = _make(case, torch.float32, layout, requires_grad, weight_layout)
    fn, ref = _fns(kw, act, slope)
    check_against_reference_unmodified(fn, ref, inputs, torch.float32, f"triton {act}")


@pytest.mark.parametrize("act,slope", ACTIVATIONS)
@pytest.mark.parametrize("case", SHAPES[:2], ids=_case_id)
def test_every_activation(case, act, slope):
    _check(case, act, slope)


@pytest.mark.parametrize("layout", testing.LAYOUTS)
@pytest.mark.parametrize("case", SHAPES, ids=_case_id)
def test_shapes_and_layouts(case, layout):
    act, slope = ACTIVATIONS[SHAPES.index(case) % len(ACTIVATIONS)]
    _check(case, act, slope, layout)


@pytest.mark.parametrize(
    "requires_grad",
    [
        (False, True, True),
        (False, False, True),
        (True, False, False),
        (True, False, True),
        (False, True, False),
    ],
    ids=lambda m: "".join("xwb"[i] if r else "-" for i, r in enumerate(m)),
)
@pytest.mark.parametrize("act,slope", [("relu", 0.01), ("silu", 0.01), (None, 0.01)])
def test_output_mask_subsets(requires_grad, act, slope):
    _check(SHAPES[0], act, slope, requires_grad=requires_grad)


def test_channels_last_weight_and_output_layouts():
    case = SHAPES[0]
    _check(case, "leaky_relu", 0.2, weight_layout="channels_last")
    (x, w, b), kw = _make(case, layout="channels_last")
    y = genkern.ops.conv2d(x, w, b, **kw, activation="relu", backend="triton")
    assert y.is_contiguous(memory_format=torch.channels_last)
    gx, gw = torch.autograd.grad(y.sum(), (x, w))  # y.sum(): a stride-0 grad_y
    # both gradients channels_last, as ATen's (channels_last where x or the weight is)
    assert gx.is_contiguous(memory_format=torch.channels_last)
    assert gw.is_contiguous(memory_format=torch.channels_last)
    xs, ws = x.detach().requires_grad_(), w.detach().requires_grad_()
    stock = torch.autograd.grad(torch.nn.functional.conv2d(xs, ws, b, **kw).sum(), (xs, ws))
    assert [g.stride() for g in (gx, gw)] == [g.stride() for g in stock]
    y = genkern.ops.conv2d(x.contiguous(), w, b, **kw, backend="triton")
    assert y.is_contiguous()


def test_sliced_input():
    """A channel and row slice of a bigger channels_last tensor (storage offset, no dense
    layout), and a stride-0 (expanded) grad_y."""
    big = testing.make_tensor([2, 7, 12, 9], layout="channels_last", device=DEVICE)
    x = big[:, 2:6, 1:10, 1:8].requires_grad_()
    w = testing.make_tensor([5, 4, 3, 3], device=DEVICE, requires_grad=True)
    b = testing.make_tensor([5], device=DEVICE, requires_grad=True)
    fn, ref = _fns(dict(stride=2, padding=1, dilation=1, groups=1), "sigmoid", 0.01)
    testing.check_against_reference(fn, ref, [x, w, b], torch.float32, "sliced")
    y = fn(x, w, b)
    grads = torch.autograd.grad(y.sum(), (x, w, b))
    ref_in = [testing.as_reference(t) for t in (x, w, b)]
    ref_grads = torch.autograd.grad(ref(*ref_in).sum(), ref_in)
    for g, rg in zip(grads, ref_grads, strict=True):
        testing.assert_close_to_reference(g, rg, torch.float32, "expanded grad_y")


@pytest.mark.parametrize("split_min,split_round", [(1, 1), (4, 4), (10**9, 16)],
                         ids=["many", "some", "none"])  # fmt: skip
def test_weight_grad_split(monkeypatch, split_min, split_round):
    """Split-K partials of the weight/bias gradient (and none) give the same answer."""
    from genkern.triton import conv2d as T

    monkeypatch.setattr(T, "_SPLIT_MIN_PIXELS", split_min)
    monkeypatch.setattr(T, "_SPLIT_ROUND", split_round)
    _check(SHAPES[2], "tanh", 0.01)  # groups + dilation: partials per group
    _check(SHAPES[0], "silu", 0.01, requires_grad=(False, False, True))  # bias-only kernel


def test_deterministic():
    (x, w, b), kw = _make(SHAPES[0])
    g = torch.randn(2, 5, 9, 7, device=DEVICE)
    runs = []
    for _ in range(2):
        y = genkern.ops.conv2d(x, w, b, **kw, activation="silu", backend="triton")
        runs.append([y, *torch.autograd.grad(y, (x, w, b), g)])
    for a, b2 in zip(*runs, strict=True):
        assert torch.equal(a, b2)


def test_direct_entry_points():
    """The registry entry points: pre-activation saved only when asked, None grads unmasked."""
    from genkern.triton.conv2d import conv2d_act_backward_triton, conv2d_act_forward_triton

    (x, w, b), _ = _make(SHAPES[0], requires_grad=(False, False, False))
    args = ([1, 1], [1, 1], [1, 1], 1)
    y, z = conv2d_act_forward_triton(x, w, b, *args, 5, 0.01, True)
    z_ref = F.conv2d(x.double(), w.double(), b.double(), 1, 1)
    testing.assert_close_to_reference(z, z_ref, torch.float32, "pre-activation")
    testing.assert_close_to_reference(y, F.silu(z_ref), torch.float32, "silu")
    y2, z2 = conv2d_act_forward_triton(x, w, b, *args, 5, 0.01, False)
    assert z2 is None and torch.equal(y, y2)
    g = torch.randn_like(y)
    gx, gw, gb = conv2d_act_backward_triton(g, z, x, w, *args, 5, 0.01, [False, True, False])
    assert gx is None and gb is None and gw.shape == w.shape
    with pytest.raises(RuntimeError, match="saved tensor"):
        conv2d_act_backward_triton(g, None, x, w, *args, 5, 0.01, [True, True, True])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_like_stock(dtype):
    """fp16/bf16: at most ~2x the error of stock PyTorch in the same dtype."""
    case = SHAPES[0]
    inputs, kw = _make(case, dtype)
    fn, ref = _fns(kw, "silu", 0.01)
    stock = lambda x, w, b: F.silu(F.conv2d(x, w, b, **kw))
    out, grad_out, grads = testing.forward_and_grads(fn, inputs)
    s_in = [t.detach().clone().requires_grad_() for t in inputs]
    s_out, _, s_grads = testing.forward_and_grads(stock, s_in, grad_out)
    r_in = [testing.as_reference(t) for t in inputs]
    r_out, _, r_grads = testing.forward_and_grads(ref, r_in, grad_out)
    assert out.dtype == dtype
    testing.assert_like_stock(out, s_out, r_out, dtype, "forward")
    for i, (g, sg, rg) in enumerate(zip(grads, s_grads, r_grads, strict=True)):
        assert g.dtype == dtype
        testing.assert_like_stock(g, sg, rg, dtype, f"grad #{i}")


@triton.jit
def _activation_kernel(x_ptr, s_ptr, g_ptr, y_ptr, gx_ptr, n, ACT: tl.constexpr, slope,
                       BLOCK: tl.constexpr):  # fmt: skip
    o = tl.arange(0, BLOCK)
    m = o < n
    x = tl.load(x_ptr + o, mask=m)
    tl.store(y_ptr + o, act_forward(x, ACT, slope), mask=m)
    g = act_backward(tl.load(g_ptr + o, mask=m), tl.load(s_ptr + o, mask=m), ACT, slope)
    tl.store(gx_ptr + o, g, mask=m)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy on inf/NaN in the interpreter
def test_activation_helpers():
    """genkern/triton/activations.py against the reference, NaN and inf included."""
    inf, nan = float("inf"), float("nan")
    special = [0.0, -0.0, nan, inf, -inf, 1e-6, -1e-7, 0.6249, 0.6251, 20.0, -20.0, 100.0, -100.0]
    x = torch.cat([torch.linspace(-12, 12, 243), torch.tensor(special)]).to(DEVICE)
    g = torch.randn_like(x)
    g[3] = nan
    for act in range(6):
        for slope in (0.2, -0.1):
            name = A.ID_TO_NAME[act]
            y_ref = reference.activation(x.double(), name, slope)
            s = x.double()
            if A.needs_saved(act) and A.saves_output(act, slope):
                s = y_ref.float().double()
            gx_ref = reference.activation_backward(g.double(), s, act, slope)
            y, gx = torch.empty_like(x), torch.empty_like(x)
            _activation_kernel[(1,)](x, s.float(), g, y, gx, x.numel(), act, slope, BLOCK=512)
            what = f"{name} slope={slope}"
            torch.testing.assert_close(y.double(), y_ref, rtol=2e-6, atol=1e-7, equal_nan=True,
                                       msg=lambda m, w=what: f"{w} forward: {m}")  # fmt: skip
            torch.testing.assert_close(gx.double(), gx_ref, rtol=2e-6, atol=1e-6, equal_nan=True,
                                       msg=lambda m, w=what: f"{w} backward: {m}")  # fmt: skip


def test_opcheck():
    """The custom ops' schema, fake kernels and autograd hold on the Triton backend too."""
    (x, w, b), _ = _make(SHAPES[1], torch.float32, "channels_last")
    act, slope = A.SILU, 0.01
    args = (x, w, b, [2, 2], [1, 1], [1, 1], 1, act, slope, True, "triton")
    torch.library.opcheck(torch.ops.genkern.conv2d_act.default, args)
    y, preact = torch.ops.genkern.conv2d_act(
        *[a.detach() if torch.is_tensor(a) else a for a in args]
    )
    bargs = (torch.randn_like(y), preact, x.detach(), w.detach(), [2, 2], [1, 1], [1, 1], 1, act,
             slope, [True, True, True], "triton")  # fmt: skip
    torch.library.opcheck(torch.ops.genkern.conv2d_act_backward.default, bargs)
