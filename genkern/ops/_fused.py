"""Pieces shared by the fused GEMM-shaped ops (conv2d, conv_transpose2d, linear): which tensor the
activation's backward keeps, and the layouts of the gradients the backward custom ops return."""

from __future__ import annotations

import functools

import torch
from torch.autograd import forward_ad as _forward_ad

from genkern import _ext
from genkern import activations as A
from genkern.ops import _checks


def wants_preact(act: int, slope: float, *tensors: torch.Tensor | None) -> bool:
    """Whether the forward must also return the pre-activation: the activation's backward needs
    its input (silu, leaky_relu with a negative slope) and a gradient will be taken, or may be:
    a torch.jit.trace graph keeps it whatever the grad mode (one graph for inference and
    training, and the same graph for trace's check, which runs without gradients)."""
    if not A.needs_saved(act) or A.saves_output(act, slope):
        return False
    if jit_tracing() or torch._C._are_functorch_transforms_active():
        return True  # (a batched tensor of vmap reads requires_grad False: found by a fuzz)
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# Eager fast paths: a plain eager call on plain tensors may run its kernels without going through
# its custom op, whose Python dispatch costs tens of microseconds (as much as a small layer's whole
# kernel); torch.compile, export, opcheck, dispatch and function modes, functorch transforms and
# tensor subclasses see the registered custom ops. Tests switch the fast paths off to cover both.
FAST_EAGER = True
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def jit_tracing() -> bool:
    """Inside torch.jit.trace (not torch.compile, which also sets the tracing state)."""
    return not torch.compiler.is_compiling() and torch._C._is_tracing()


def untraced() -> bool:
    """Not traced by torch.compile/export or torch.jit.trace, no dispatch mode (such as
    FakeTensorMode) or torch function mode active, no functorch transform: the tensors hold real
    values."""
    return (
        not torch.compiler.is_compiling()
        and not torch._C._is_tracing()
        and torch._C._len_torch_dispatch_stack() == 0
        and not torch._C._is_torch_function_mode_enabled()
        and torch._C._functorch.peek_interpreter_stack() is None
    )


def eager() -> bool:
    """True in plain eager mode (untraced) with the fast paths on."""
    return FAST_EAGER and untraced()


def try_fast(entry: str, *args, backend: str):
    """The result of genkern._C's optimistic entry `entry` (csrc/cpu/fast_entry.h) for a public
    op's arguments, or None: the entry checks in C++ that the call is a plain eager one (no
    dispatch or torch function mode, functorch transform, CPU autocast, torch.jit.trace or
    forward-AD level) of the cpu backend (resolving "auto" from its mirror of use_backend()'s
    stack and GENKERN_BACKEND) on plain float tensors with valid arguments and runs it, or
    declines; and it is not tried with the fast paths off, under torch.compile, or without the
    extension. The ops ask stock_composite after a decline."""
    if FAST_EAGER and _ext.HAS_CPU and not torch.compiler.is_compiling():
        return getattr(_ext._C, entry)(*args, backend)
    return None


def stock_composite(*tensors: torch.Tensor | None) -> bool:
    """Whether an op runs its stock composite (genkern.reference's, which autograd, functorch and
    torch.compile handle as stock's ops) instead of its fused kernels: inside any torch.func
    transform (grad, vjp, jacrev, hessian, jvp, jacfwd, vmap, functionalize; also as
    torch.compile traces one), whose rules the custom ops lack (their generated autograd.Function
    refuses the differentiating ones; vmap fell back to a loop over the batch, with no rule at
    all for batch_norm's running-statistics update), or with a torch.autograd.forward_ad tangent
    on one of the tensors, which the custom ops would drop silently (zeros)."""
    if torch._C._are_functorch_transforms_active():  # (read right by Dynamo's trace too)
        return True
    if _forward_ad._current_level < 0 or torch.compiler.is_compiling():
        return False  # (Dynamo's trace reads a level, and tangents, where none were made)
    return any(
        isinstance(t, torch.Tensor) and _forward_ad.unpack_dual(t).tangent is not None
        for t in tensors
    )


def stock_call(tensors, composite, *args):
    """A call of composite(*args) for later, where stock_composite(*tensors); else None. The ops
    make it before their own checks change the arguments and run it after them, so a call
    refused outside a transform is refused inside one too (found by a fuzz)."""
    return functools.partial(composite, *args) if stock_composite(*tensors) else None


def creates_graph() -> bool:
    """Whether a backward runs with create_graph=True (grad mode on inside it), outside
    torch.compile's tracing."""
    return torch.is_grad_enabled() and not torch.compiler.is_compiling()


def stock_backward(grad_y: torch.Tensor | None) -> bool:
    """Whether a backward takes the op's stock composite, differentiated by autograd, instead of
    genkern's backward kernels: with create_graph=True (grad mode on inside it: the gradients
    must be differentiable), or on batched gradients (a backward under vmap, as
    autograd.grad(is_grads_batched=True) and jacobian(vectorize=True) run it: the kernels cannot
    read a batched tensor's storage); never while torch.compile traces."""
    if torch.compiler.is_compiling():
        return False
    return torch.is_grad_enabled() or batched(grad_y)


def batched(t: torch.Tensor | None) -> bool:
    """Whether t is a batched tensor of vmap (torch.func's, or the one autograd.grad's
    is_grads_batched runs)."""
    functorch = torch._C._functorch
    return t is not None and (functorch.is_batchedtensor(t) or functorch.is_legacy_batchedtensor(t))


class KeptInputs:
    """An op's inputs kept for a backward by stock's composite (create_graph=True), with their
    versions at the forward. Not saved for backward: the first-order backward, which reads none
    of them, still runs after an in-place change of one (as the C++ nodes' SavedVariables, never
    unpacked there); the composite refuses then, as stock's saved tensors do."""

    def __init__(self, *tensors):
        self.tensors = tensors
        self.versions = [None if t is None else t._version for t in tensors]

    def unpack(self) -> tuple:
        for t, v in zip(self.tensors, self.versions):
            if t is not None and t._version != v:
                raise RuntimeError(
                    "one of the variables needed for gradient computation has been modified by "
                    f"an inplace operation: [{t.type()} {list(t.shape)}] is at version "
                    f"{t._version}; expected version {v} instead"
                )
        return self.tensors


def differentiable_grads(recompute, inputs, mask, grad_y):
    """The gradients of a fused op for its inputs (x, weight, bias; those mask asks for, else
    None) where stock_backward: the op's stock composite, recompute(*inputs), run again from the
    saved inputs and differentiated by autograd (with create_graph=True, differentiably: a second
    derivative, a WGAN-GP gradient penalty's, is stock's). An op of several outputs: recompute
    returns a tuple of them and grad_y holds their gradients (None: nothing flowed into that
    one). The C++ eager paths do the same (csrc/cpu/composite_grads.h)."""
    create_graph = torch.is_grad_enabled()
    # an input frozen since the forward (a GAN loop toggling D's parameters) gets none, as
    # stock's AccumulateGrad skips it (found by a fuzz: autograd.grad refused it)
    mask = [m and t is not None and t.requires_grad for t, m in zip(inputs, mask)]
    with torch.enable_grad():
        # aliases: the inner grad's capture there fires none of the hooks on the inputs
        # themselves (found by a fuzz: a tensor hook, retain_grad, on a batch norm's input ran
        # twice); not view_as, which recomputes a size-1 dim's stride (found by a fuzz: a
        # channels_last 1x8x4x4 float64 weight's then made ATen's conv backward raise)
        inputs = [
            torch.ops.aten.alias(t) if t is not None and t.requires_grad else t for t in inputs
        ]
        y = recompute(*inputs)
    ys, gs = (y, grad_y) if isinstance(y, tuple) else ((y,), (grad_y,))
    # an output that needs no gradient (constant in the inputs) adds nothing (found by a fuzz:
    # autograd.grad refused it)
    flowed = [(o, g) for o, g in zip(ys, gs, strict=True) if g is not None and o.requires_grad]
    wanted = [t for t, m in zip(inputs, mask) if m]
    if not wanted or not flowed:
        return tuple(None for _ in mask)
    grads = torch.autograd.grad(
        [o for o, _ in flowed],
        wanted,
        [g for _, g in flowed],
        create_graph=create_graph,
        materialize_grads=True,
    )
    if create_graph:
        grads = [_differentiable(g) for g in grads]
    grads = iter(grads)
    return tuple(next(grads) if m else None for m in mask)


def _differentiable(grad: torch.Tensor) -> torch.Tensor:
    """grad, requiring a gradient where it does not (a gradient constant in the op's inputs, as a
    frozen conv's input gradient is): stock's backward ops return gradients that do, with none
    for those inputs, so a gradient penalty's backward through one runs (where it would raise)
    and leaves their .grad None."""
    if grad.requires_grad:
        return grad
    # (not grad.new_zeros: under vmap, that would be batched too)
    return grad + torch.zeros((), dtype=grad.dtype, device=grad.device, requires_grad=True)


def linear_map_grad(forward_torch, input_size, channels_last: bool, grad_y):
    """The input gradient of a linear map (average pooling, nearest upsampling) where
    stock_backward: the vector-Jacobian product of its stock composite forward_torch at a zero
    input of the input's size and layout (a linear map's Jacobian is the same at every input),
    with create_graph=True a differentiable function of grad_y, so second derivatives are
    stock's. The C++ eager paths do the same (csrc/cpu/eager_autograd.cpp, linear_map_grad)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    # (not grad_y.new_zeros: under vmap, that would be batched too)
    x = torch.empty(input_size, dtype=grad_y.dtype, device=grad_y.device, memory_format=fmt)
    return differentiable_grads(forward_torch, (x.zero_().requires_grad_(),), (True,), grad_y)[0]


def backward_grads(ctx, grad_y, forward_torch, backward, num_args: int):
    """A fused GEMM-shaped op's autograd backward (its context saved x, weight, the activation's
    tensor and bias; ctx.args are the op's arguments after bias): its backward op, or where
    stock_backward, differentiable_grads. None for what needs no gradient."""
    if grad_y is None:  # no gradient reached the output (grads are not materialized as zeros)
        return (None,) * num_args
    x, weight, saved = ctx.saved_tensors
    mask = [bool(m) for m in ctx.needs_input_grad[:3]]
    if stock_backward(grad_y):
        grads = differentiable_grads(
            lambda *t: forward_torch(*t, *ctx.args, False)[0],
            (x, weight, held_bias(ctx)),
            mask,
            grad_y,
        )
    else:
        grads = backward(grad_y, saved, x, weight, *ctx.args, mask, ctx.backend)
    return (*(g if m else None for g, m in zip(grads, mask)), *(None,) * (num_args - 3))


def fast_eager(*tensors: torch.Tensor | None) -> bool:
    """eager(), and every tensor given is a plain tensor or Parameter (no subclass) whose memory
    holds its values (not a negative view, such as a conjugated complex tensor's .imag, whose
    kernels would read the values un-negated)."""
    return eager() and all(t is None or (type(t) in _PLAIN and not t.is_neg()) for t in tensors)


def kept_edge(t: torch.Tensor | None):
    """t's place in the autograd graph, for a node that keeps a value of t but not t: the edge
    alone where the extension is there (csrc/cpu/input_edge.h), else t itself; None where t
    needs no gradient (or while traced)."""
    if t is None or not t.requires_grad or not untraced():
        return None
    return _ext._C.input_edge(t) if _ext.HAS_CPU else t


def at_edge(value: torch.Tensor, edge) -> torch.Tensor:
    """value put where kept_edge's tensor was in the autograd graph: its gradient flows on into
    that tensor's producers (without the extension, value + (t - t.detach()) in t's graph)."""
    if edge is None:
        return value
    if isinstance(edge, torch.Tensor):
        with torch.enable_grad():
            return value + (edge - edge.detach())
    return _ext._C.reattached(value, edge)


def hold_bias(ctx, bias: torch.Tensor | None) -> None:
    """Holds the bias on ctx, not saved: stock's backward, which saves what it reads, does not
    read it, so a change to it in place between the forward and the backward must not raise
    (found by a fuzz: "modified by an inplace operation"). Its value now and its place in the
    autograd graph now (kept_edge), for held_bias and a batch norm keeping its output
    (ctx.bias_value; not while traced: neither runs there)."""
    ctx.bias_value = ctx.bias_edge = None
    if bias is None or not untraced():
        return
    ctx.bias_value = bias.detach().clone()
    ctx.bias_edge = kept_edge(bias)


def held_bias(ctx) -> torch.Tensor | None:
    """The held bias for a stock composite (differentiable_grads): its value at the forward, in
    the graph where it was then (found by fuzzes: a step on it since, a change in place of a
    bias computed from a parameter, or its requires_grad turned on since, changed the
    gradients). Without the extension, value + (b - b.detach()) in the bias's graph now. The C++
    paths do the same (eager_autograd.cpp)."""
    value, edge = ctx.bias_value, ctx.bias_edge
    if isinstance(edge, torch.Tensor) and not edge.requires_grad:
        # frozen since: its gradient reaches the node's edge alone
        return value.detach().requires_grad_()
    return at_edge(value, edge)


def owned(t: torch.Tensor) -> torch.Tensor:
    """t as a tensor of its own on the same memory where it is a view (a kernel's GEMM result
    reshaped): autograd refuses in-place ops on a custom op's outputs that are views (found by a
    fuzz: relu_ after a conv_transpose2d onto 4x4 from 1x1, DCGAN's first layer, off the C++
    path), which stock's outputs allow. The C++ eager paths do the same (eager_autograd.cpp)."""
    if t._base is None:
        return t
    out = t.new_empty(0)
    return out.set_(t.untyped_storage(), t.storage_offset(), t.size(), t.stride())


def saved_for_backward(act: int, slope: float, y: torch.Tensor, preact: torch.Tensor):
    """The one tensor the activation's backward reads: its output, its input, or None."""
    if not A.needs_saved(act):
        return None
    return y if A.saves_output(act, slope) else preact


def _grad_formats(x, weight, fmt):
    """The layouts of x's and weight's gradients: fmt for both where given (a conv's: ATen's
    conv_output_format, channels_last where x or the weight is, whatever grad_y's; found by a
    fuzz: they followed x's and the weight's own layouts), else x's and weight's dense layouts."""
    return (fmt or _checks.dense_format(x), fmt or _checks.dense_format(weight))


def grads_out(x, weight, mask, gx, gw, gb, fmt=None):
    """Gradients in the layouts the fakes promise (_grad_formats); an unrequested one is an empty
    tensor."""
    fx, fw = _grad_formats(x, weight, fmt)
    return (
        gx.contiguous(memory_format=fx) if mask[0] else x.new_empty(0),
        gw.contiguous(memory_format=fw) if mask[1] else x.new_empty(0),
        gb.contiguous() if mask[2] else x.new_empty(0),
    )


def fake_grads(x, weight, bias_size: int, mask, fmt=None):
    """The fake kernel's gradients (see grads_out)."""
    fx, fw = _grad_formats(x, weight, fmt)
    gx = x.new_empty(x.shape).contiguous(memory_format=fx)
    gw = weight.new_empty(weight.shape).contiguous(memory_format=fw)
    return grads_out(x, weight, mask, gx, gw, weight.new_empty(bias_size), fmt)


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type autocast does not know (meta: found by the fuzz)
        return False


def autocast(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """torch.autocast's rule for conv and linear: inside an autocast region of x's device type,
    the op runs in the autocast dtype, on per-call casts of its float32 (not float64) inputs and
    weights; gradients flow back to the originals. Outside one (or for a non-tensor x, which the
    op's checks reject), the arguments as given."""
    if not isinstance(x, torch.Tensor) or not _autocast_enabled(x.device.type):
        return x, weight, bias
    dtype = torch.get_autocast_dtype(x.device.type)

    def cast(t):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            return t
        if t.dtype in (dtype, torch.float64):
            return t
        return t.to(dtype)

    return cast(x), cast(weight), cast(bias)
