"""genkern.ops.batch_norm: act(batch_norm(x)), fused, one custom op on every backend.

Two custom ops: `genkern::batch_norm_act` (functional, with a registered backward: torch.library
refuses an autograd formula on a mutating op) returns y and the statistics it normalized with, and
`genkern::batch_norm_update_stats` updates the running statistics in place (declared in
`mutates_args`, so torch.compile and opcheck see the mutation). Both run inside one public call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genkern import activations as A
from genkern import backends, reference
from genkern.ops import _checks, _fused, _registry


def batch_norm(
    x: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    activation: str | None = None,
    negative_slope: float = 0.01,
    backend: str = "auto",
) -> torch.Tensor:
    """act(F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)).

    In training, batch statistics normalize and the running statistics are updated in place
    (unbiased variance, as torch). `activation` as in genkern.ops.conv2d.
    """
    y = _fused.try_fast(
        "batch_norm_fast",
        x,
        running_mean,
        running_var,
        weight,
        bias,
        training,
        momentum,
        eps,
        activation,
        negative_slope,
        backend=backend,
    )
    if y is not None:
        return y
    args = (running_mean, running_var, weight, bias, training, momentum, eps, activation)
    composite = _fused.stock_call((x, weight, bias), reference.batch_norm, x, *args, negative_slope)
    act = A.activation_id(activation)
    slope = A.check_negative_slope(negative_slope)
    if training and not eps > 0.0:  # torch.nn.functional.batch_norm's checks
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    if not eps >= 0.0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")
    # as torch: float32 weight and bias may go with a 16-bit input (mixed precision, autocast)
    _checks.check_floating("batch_norm", float32_params=True, input=x, weight=weight, bias=bias)
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        if t is not None and (not t.is_floating_point() or t.device != x.device):
            raise RuntimeError(
                f"batch_norm(): expected '{name}' to be a floating-point tensor on {x.device}"
            )
        if t is not None and t.requires_grad:  # torch refuses it too; genkern used to ignore it
            raise RuntimeError(
                f"The function 'batch_norm' is not differentiable with respect to argument "
                f"'{name}'. This input cannot have requires_grad True."
            )
        # the input's dtype, or float32 for a 16-bit input (torch's mixed-dtype rule)
        if (
            t is not None
            and t.dtype != x.dtype
            and not (t.dtype == torch.float32 and x.dtype in (torch.bfloat16, torch.float16))
        ):
            raise RuntimeError(
                f"batch_norm(): expected '{name}' to have the same dtype as 'input' ({x.dtype}), "
                f"but got {t.dtype}"
            )
    if x.dim() < 2:
        raise ValueError(f"expected 2D or higher input to batch_norm (got {x.dim()}D input)")
    channels = x.shape[1]
    if not training and (running_mean is None or running_var is None):
        which = "running_mean" if running_mean is None else "running_var"
        raise RuntimeError(f"{which} must be defined in evaluation mode")
    if (running_mean is None) != (running_var is None):  # as torch, after its eval check
        raise ValueError("running_mean and running_var must either both be None or neither be None")
    for name, t in (  # torch's order
        ("running_mean", running_mean),
        ("running_var", running_var),
        ("weight", weight),
        ("bias", bias),
    ):
        if t is not None and t.numel() != channels:
            raise RuntimeError(f"{name} should contain {channels} elements not {t.numel()}")
        if t is not None and t.dim() != 1:  # torch: an internal accessor error
            raise RuntimeError(
                f"expected {name} to be 1-dimensional with {channels} elements, but got {name} "
                f"of size {list(t.shape)}"
            )
    if training:
        size_prods = x.shape[0]
        for s in x.shape[2:]:
            size_prods *= s
        if size_prods == 1:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {x.size()}"
            )
    momentum = A.as_float(momentum, "momentum")
    if _fused.jit_tracing():
        # torch.jit.trace would keep the running statistics' count (x's size) and whether the
        # backward needs act's input as constants of the traced call (found by a fuzz: another
        # batch size updated running_var with the traced one's count); stock's batch norm is
        # recorded with its sizes read at each call
        y = F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
        return reference.activation(y, A.ID_TO_NAME[act], slope)
    name = backends.resolve("batch_norm", backend, x)
    _require_backend("batch_norm", "batch_norm_act_forward", name)
    if composite is not None:  # (after genkern's checks: the same errors inside a transform)
        return composite()
    if (
        name == "cpu"
        and x.numel()
        and _fused.fast_eager(x, weight, bias, running_mean, running_var)
    ):  # one C++ call: kernels, autograd and the running-statistics update
        return _registry.extension().batch_norm_act_eager_cpu(
            x,
            weight,
            bias,
            running_mean,
            running_var,
            bool(training),
            float(momentum),
            float(eps),
            act,
            slope,
        )
    save_preact = (
        A.needs_saved(act)
        and not A.saves_output(act, slope)
        and torch.is_grad_enabled()
        and any(t is not None and t.requires_grad for t in (x, weight, bias))
    )
    count = x.numel() // channels if x.numel() else 0
    update = training and (running_mean is not None or running_var is not None) and count > 0
    if update and _updates_before_saving(x, weight, bias):
        var, mean = _batch_stats(x)
        torch.ops.genkern.batch_norm_update_stats(
            running_mean, running_var, mean, var, float(momentum), count
        )
        update = False
    y, mean, _, var, _ = torch.ops.genkern.batch_norm_act(
        x,
        weight,
        bias,
        running_mean,
        running_var,
        bool(training),
        float(eps),
        act,
        slope,
        save_preact,
        name,
    )
    if update:
        torch.ops.genkern.batch_norm_update_stats(
            running_mean, running_var, mean, var, float(momentum), count
        )
    return y


def _reduced_dims(x: torch.Tensor) -> list[int]:
    return [0, *range(2, x.dim())]


def _batch_stats(x: torch.Tensor):
    """(var, mean) of a training batch per channel, biased, in the statistics' dtype."""
    return torch.var_mean(x.to(_stat_dtype(x.dtype)), _reduced_dims(x), correction=0)


def _updates_before_saving(*tensors: torch.Tensor | None) -> bool:
    """Whether the running statistics must be updated before the op saves its tensors for the
    backward, as stock's kernel does: under saved-tensor hooks (a non-reentrant checkpoint, whose
    recomputation stops once the tensors it needs are saved; stock's recomputed forward updates
    the statistics again). Found by a fuzz: the torch and triton backends updated them once."""
    return (
        torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
        and any(t is not None and t.requires_grad for t in tensors)
        and torch._C._autograd._top_saved_tensors_default_hooks(False) is not None
    )


def _require_backend(public: str, op: str, name: str) -> None:
    """A clear error for a backend that has no kernel for this op (yet)."""
    if name not in _registry._TABLE.get(op, {}):
        have = ", ".join(repr(b) for b in _registry._TABLE.get(op, {}))
        raise RuntimeError(
            f"genkern.ops.{public}: backend {name!r} has no kernel for this op; it runs on {have}"
        )


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _dense(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=_checks.dense_format(x))


# ---- the custom ops --------------------------------------------------------------------------


@torch.library.custom_op(
    "genkern::batch_norm_update_stats", mutates_args=("running_mean", "running_var")
)
def _batch_norm_update_stats(
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    mean: torch.Tensor,
    var: torch.Tensor,
    momentum: float,
    count: int,
) -> None:
    """running += momentum * (batch - running) (unbiased variance): one lerp_ each, a 16-bit
    running statistic's in float32 and rounded once, as torch's (a float16 batch variance over
    65504 made the running one inf: found by the fuzz)."""
    if running_mean is not None:
        _lerp_into(running_mean, mean, momentum)
    if running_var is not None:
        factor = count / (count - 1) if count > 1 else float("inf")
        _lerp_into(running_var, var * factor, momentum)


def _lerp_into(running: torch.Tensor, batch: torch.Tensor, momentum: float) -> None:
    if running.dtype in (torch.float16, torch.bfloat16):
        running.copy_(running.float().lerp_(batch.float(), momentum))
    else:
        running.lerp_(batch.to(running.dtype), momentum)


@_batch_norm_update_stats.register_fake
def _(running_mean, running_var, mean, var, momentum, count):
    return None


@torch.library.custom_op("genkern::batch_norm_act", mutates_args=())
def _batch_norm_act(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    training: bool,
    eps: float,
    activation: int,
    negative_slope: float,
    save_preact: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, mean, invstd, var, preact): the statistics used (batch ones in training, biased var;
    else the running ones), preact (= act's input) only when save_preact, else empty."""
    fmt = _checks.dense_format(x)
    c = x.shape[1]
    if x.numel() == 0:  # as torch: an empty output, running statistics untouched
        st = _stat_dtype(x.dtype)
        return (
            torch.empty_like(x, memory_format=fmt),
            x.new_zeros(c, dtype=st),
            x.new_ones(c, dtype=st),
            x.new_ones(c, dtype=st),
            x.new_empty(0),
        )
    fwd = _registry.kernel("batch_norm_act_forward", backend)
    rm, rv = (None, None) if training else (running_mean, running_var)
    y, mean, invstd, var, preact = fwd(
        _dense(x), weight, bias, rm, rv, training, eps, activation, negative_slope, save_preact
    )
    preact = preact.contiguous(memory_format=fmt) if save_preact else x.new_empty(0)
    if not training:  # fresh tensors: a custom op's outputs must not alias its inputs
        mean, var = mean.clone(), var.clone()
    return y.contiguous(memory_format=fmt), mean, invstd, var, preact


@_batch_norm_act.register_fake
def _(
    x,
    weight,
    bias,
    running_mean,
    running_var,
    training,
    eps,
    activation,
    negative_slope,
    save_preact,
    backend,
):
    fmt = _checks.dense_format(x)
    st = _stat_dtype(x.dtype)
    y = torch.empty_like(x, memory_format=fmt)
    save = save_preact and x.numel() > 0
    preact = torch.empty_like(x, memory_format=fmt) if save else x.new_empty(0)
    c = x.shape[1]
    return (y, x.new_empty(c, dtype=st), x.new_empty(c, dtype=st), x.new_empty(c, dtype=st), preact)


@torch.library.custom_op("genkern::batch_norm_act_backward", mutates_args=())
def _batch_norm_act_backward(
    grad_y: torch.Tensor,
    saved: torch.Tensor | None,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    mean: torch.Tensor,
    invstd: torch.Tensor,
    training: bool,
    activation: int,
    negative_slope: float,
    output_mask: list[bool],
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    c = x.shape[1]
    if x.numel() == 0:
        gx, gw, gb = torch.zeros_like(x), x.new_zeros(c), x.new_zeros(c)
    else:
        bwd = _registry.kernel("batch_norm_act_backward", backend)
        gx, gw, gb = bwd(
            grad_y,
            saved,
            _dense(x),
            weight,
            mean,
            invstd,
            training,
            activation,
            negative_slope,
            output_mask,
        )
    return _grads_out(x, weight, output_mask, gx, gw, gb)


def _grads_out(x, weight, mask, gx, gw, gb):
    # the backends' grad_weight and grad_bias in their accumulation precision, cast here once: a
    # cast to a 16-bit x's dtype first made float32 parameters' gradients inf past 65504
    dt = weight.dtype if weight is not None else x.dtype
    return (
        gx.contiguous(memory_format=_checks.dense_format(x)) if mask[0] else x.new_empty(0),
        gw.to(dt).contiguous() if mask[1] else x.new_empty(0),
        gb.to(dt).contiguous() if mask[2] else x.new_empty(0),
    )


@_batch_norm_act_backward.register_fake
def _(
    grad_y,
    saved,
    x,
    weight,
    mean,
    invstd,
    training,
    activation,
    negative_slope,
    output_mask,
    backend,
):
    c = x.shape[1]
    dt = weight.dtype if weight is not None else x.dtype
    gx = torch.empty_like(x, memory_format=_checks.dense_format(x))
    return _grads_out(
        x, weight, output_mask, gx, x.new_empty(c, dtype=dt), x.new_empty(c, dtype=dt)
    )


def _keeps_output(x, weight, bias, training, act, slope, backend, var, invstd) -> bool:
    """The cpu backend keeps act's output y in x's place where batch_norm_keeps_output allows
    (csrc/cpu/batch_norm_act.h), as its C++ eager node does (the same bits); not under tracing,
    where the weight's and the statistics' values are unknown."""
    return (
        backend == "cpu"
        and _fused.untraced()
        and _registry.extension().batch_norm_keeps_output(
            x, weight, bias, training, act, slope, var, invstd
        )
    )


def _setup_context(ctx, inputs, output):
    x, weight, bias, rm, rv, training, eps, act, slope, save_preact, backend = inputs
    y, mean, invstd, var, preact = output
    ctx.mark_non_differentiable(mean, invstd, var, preact)
    ctx.set_materialize_grads(False)  # no zeros made for those to be ignored
    ctx.keeps_output = _keeps_output(x, weight, bias, training, act, slope, backend, var, invstd)
    ctx.input_edge = None
    if ctx.keeps_output:
        ctx.save_for_backward(y, weight, mean, invstd, None)
        ctx.input_edge = _fused.kept_edge(x)  # (for _stock_grads)
    else:
        saved = None
        if A.needs_saved(act):
            saved = y if A.saves_output(act, slope) else preact
        ctx.save_for_backward(x, weight, mean, invstd, saved)
    # the bias as it is now: x is recovered from y with it (see the C++), and _stock_grads reads it
    _fused.hold_bias(ctx, bias)
    ctx.eps = eps
    ctx.args = (training, act, slope, backend)


def _stock_grads(ctx, x, weight, mean, invstd, mask, grad_y):
    """(grad_x, grad_weight, grad_bias) where _fused.stock_backward: the stock composite's
    (_normalized_act), differentiated by autograd; x recovered from y where y was kept, placed
    where x was in the graph. The C++ eager path does the same (csrc/cpu/eager_autograd.cpp)."""
    training, act, slope, _ = ctx.args
    if ctx.keeps_output:
        with torch.no_grad():
            x = _registry.extension().batch_norm_input_from_output(
                x, weight, ctx.bias_value, mean, invstd, slope
            )
        x = _fused.at_edge(x, ctx.input_edge)

    def composite(x, weight, bias):
        stats = _batch_stats_invstd(x, ctx.eps)[:2] if training else (mean, invstd)
        return _normalized_act(x, weight, bias, *stats, act, slope)[0]

    return _fused.differentiable_grads(composite, (x, weight, _fused.held_bias(ctx)), mask, grad_y)


def _backward(ctx, grad_y, _gm, _gi, _gv, _gp):
    if grad_y is None:  # no gradient reached the output (grads are not materialized as zeros)
        return (None,) * 11
    x, weight, mean, invstd, saved = ctx.saved_tensors
    training, act, slope, backend = ctx.args
    mask = [bool(m) for m in ctx.needs_input_grad[:3]]
    if _fused.stock_backward(grad_y):
        gx, gw, gb = _stock_grads(ctx, x, weight, mean, invstd, mask, grad_y)
    elif ctx.keeps_output:  # x holds y; an eager call (see _keeps_output): the kernel directly
        grads = _registry.extension().batch_norm_act_backward_cpu(
            grad_y, None, x, weight, mean, invstd, training, act, slope, mask, ctx.bias_value, True
        )
        gx, gw, gb = _grads_out(x, weight, mask, *grads)
    else:
        gx, gw, gb = torch.ops.genkern.batch_norm_act_backward(
            grad_y, saved, x, weight, mean, invstd, training, act, slope, mask, backend
        )
    return (
        gx if mask[0] else None,
        gw if mask[1] else None,
        gb if mask[2] else None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
    )


_batch_norm_act.register_autograd(_backward, setup_context=_setup_context)


# ---- backends ---------------------------------------------------------------------------------


def _bcast(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.view([1, -1] + [1] * (x.dim() - 2))


def _forward_torch(x, weight, bias, rm, rv, training, eps, act, slope, save_preact):
    if training:
        mean, invstd, var = _batch_stats_invstd(x, eps)
    else:
        st = _stat_dtype(x.dtype)
        mean, var = rm.to(st), rv.to(st)
        invstd = torch.rsqrt(var + eps)
    y, z = _normalized_act(x, weight, bias, mean, invstd, act, slope)
    return y, mean, invstd, var, z if save_preact else None


def _batch_stats_invstd(x, eps):
    """(mean, invstd, var) of a training batch, differentiable in x."""
    var, mean = _batch_stats(x)
    return mean, torch.rsqrt(var + eps), var


def _normalized_act(x, weight, bias, mean, invstd, act, slope):
    """(y, z): z = (x - mean) * invstd * weight + bias in the statistics' dtype, cast to x's;
    y = act(z). Stock's differentiable ops."""
    st = _stat_dtype(x.dtype)
    z = (x.to(st) - _bcast(mean, x)) * _bcast(invstd, x)
    if weight is not None:
        z = z * _bcast(weight.to(st), x)
    if bias is not None:
        z = z + _bcast(bias.to(st), x)
    z = z.to(x.dtype)
    return reference.activation(z, A.ID_TO_NAME[act], slope), z


def _backward_torch(grad_y, saved, x, weight, mean, invstd, training, act, slope, mask):
    st = _stat_dtype(x.dtype)
    g = reference.activation_backward(grad_y, saved, act, slope).to(st)
    dims = _reduced_dims(x)
    xhat = (x.to(st) - _bcast(mean, x)) * _bcast(invstd, x)
    gb = g.sum(dims)
    gw = (g * xhat).sum(dims)
    scale = invstd if weight is None else weight.to(st) * invstd
    if training:
        count = x.numel() // x.shape[1]
        gx = (g - _bcast(gb / count, x) - xhat * _bcast(gw / count, x)) * _bcast(scale, x)
    else:
        gx = g * _bcast(scale, x)
    return gx.to(x.dtype), gw, gb


def _forward_cpu(x, weight, bias, rm, rv, training, eps, act, slope, save_preact):
    return _registry.extension().batch_norm_act_forward_cpu(
        x, weight, bias, rm, rv, training, 0.0, eps, act, slope, save_preact
    )


def _backward_cpu(grad_y, saved, x, weight, mean, invstd, training, act, slope, mask):
    return _registry.extension().batch_norm_act_backward_cpu(
        grad_y, saved, x, weight, mean, invstd, training, act, slope, mask, None, False
    )


_registry.register("batch_norm_act_forward", torch=_forward_torch, cpu=_forward_cpu)
_registry.register("batch_norm_act_backward", torch=_backward_torch, cpu=_backward_cpu)
_registry.register(
    "batch_norm_act_forward", triton="genkern.triton.batch_norm:batch_norm_act_forward_triton"
)
_registry.register(
    "batch_norm_act_backward", triton="genkern.triton.batch_norm:batch_norm_act_backward_triton"
)


def _coefficients_forward(mean, var, weight, bias, eps):
    """(invstd, scale, shift) per channel, in float64 then the statistics' dtype."""
    invstd = torch.rsqrt(var.double() + eps)
    w = weight.double() if weight is not None else torch.ones_like(invstd)
    b = bias.double() if bias is not None else torch.zeros_like(invstd)
    return invstd, w * invstd, b - mean.double() * w * invstd


def _forward_cuda(x, weight, bias, rm, rv, training, eps, act, slope, save_preact):
    ext = _registry.extension()
    st = _stat_dtype(x.dtype)
    if training:
        mean, var = ext.batch_norm_stats_cuda(x)
    else:
        mean, var = rm.to(st), rv.to(st)
    invstd, scale, shift = _coefficients_forward(mean, var, weight, bias, eps)
    y, pre = ext.batch_norm_apply_cuda(x, scale, shift, act, slope, save_preact)
    return y, mean.to(st), invstd.to(st), var.to(st), pre if save_preact else None


def _backward_cuda(grad_y, saved, x, weight, mean, invstd, training, act, slope, mask):
    ext = _registry.extension()
    sum_g, sum_gx = ext.batch_norm_backward_reduce_cuda(grad_y, saved, x, mean, act, slope)
    inv = invstd.double()
    gw, gb = sum_gx.double() * inv, sum_g  # cast once, to the parameters' dtype, by _grads_out
    if not mask[0]:
        return x.new_empty(0), gw, gb
    count = x.numel() // x.shape[1]
    a = inv if weight is None else weight.double() * inv
    if training:
        kb = -a * inv * (sum_gx.double() * inv / count)
        kc = -a * (sum_g.double() / count) - kb * mean.double()
    else:  # empty: evaluation, gx = a * g (no 0 * x term, which made inf in x a NaN gradient)
        kb, kc = a.new_empty(0), a.new_empty(0)
    gx = ext.batch_norm_backward_apply_cuda(grad_y, saved, x, a, kb, kc, act, slope)
    return gx, gw, gb


_registry.register("batch_norm_act_forward", cuda=_forward_cuda)
_registry.register("batch_norm_act_backward", cuda=_backward_cuda)
