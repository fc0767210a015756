"""genkern.ops losses: fused GAN (discriminator/generator) and VAE losses, and reparameterize.

Each loss is one custom op whose forward pass also produces the gradient with respect to every
input that requires it (in fresh tensors, never in an input's storage); the registered backward
only scales those by grad_output; with create_graph=True it differentiates stock's composite of
the loss instead (a second derivative). A GAN loss of constant slope (wgan's, the hinge
generator's: a multiple of means) computes its value alone, and its backward fills the constant
gradient (see _mean_grads). The per-element math: csrc/include/genkern/losses.h
(C++/CUDA), genkern/triton/losses.py (Triton), `_term_torch` / `_recon_torch` here (the "torch"
backend).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from genkern import activations as A
from genkern import backends
from genkern.ops import _checks, _fused, _registry

# Term ids: the mirror of genkern::LossTerm in csrc/include/genkern/losses.h.
SOFTPLUS_NEG, SOFTPLUS_POS, HINGE_REAL, HINGE_FAKE, NEG, POS, SQ_ONE, SQ_ZERO = range(8)
GAN_KINDS = ("bce", "hinge", "wgan", "lsgan")
# kind -> (term of the real logits, term of the fake logits) of the discriminator loss
D_TERMS = {
    "bce": (SOFTPLUS_NEG, SOFTPLUS_POS),
    "hinge": (HINGE_REAL, HINGE_FAKE),
    "wgan": (NEG, POS),
    "lsgan": (SQ_ONE, SQ_ZERO),
}
G_TERMS = {"bce": SOFTPLUS_NEG, "hinge": NEG, "wgan": NEG, "lsgan": SQ_ONE}
# Reconstruction ids: genkern::ReconLoss.
RECON_BCE_LOGITS, RECON_BCE, RECON_MSE = range(3)
RECON_LOSSES = ("bce", "mse")
REDUCTIONS = ("sum", "mean")


def _kind(kind) -> str:
    if kind not in GAN_KINDS:
        valid = ", ".join(repr(k) for k in GAN_KINDS)
        raise ValueError(f"kind must be one of {valid}, but got {kind!r}")
    return kind


def check_gan_kind(kind) -> str:
    return _kind(kind)


def check_vae_args(recon_loss, reduction, beta) -> None:
    if recon_loss not in RECON_LOSSES:
        valid = ", ".join(repr(k) for k in RECON_LOSSES)
        raise ValueError(f"recon_loss must be one of {valid}, but got {recon_loss!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction")
    # traced by torch.compile: a float that stays symbolic, or a numpy scalar, an array to
    # Dynamo (found by a fuzz: fullgraph failed, the rest ran eagerly)
    symbolic = isinstance(beta, torch.SymFloat)
    numpy_scalar = isinstance(beta, np.ndarray) and beta.ndim == 0
    if not (symbolic or numpy_scalar):
        A.as_float(beta, "beta")


def _needs(t: torch.Tensor | None) -> bool:
    """Whether the forward pass must produce t's gradient; under torch.jit.trace every given
    input's: the graph keeps the choice as a constant, and inputs of later calls may require
    grad (found by a fuzz: a loss traced with plain inputs had no gradients)."""
    if t is None:
        return False
    return _fused.jit_tracing() or (torch.is_grad_enabled() and t.requires_grad)


# Eager fast path (see genkern/ops/_fused.py): a plain eager call goes straight to the backend's
# kernel (and, when a gradient is needed, through a small autograd.Function with the same backward
# as the custom op's): the custom op's dispatch costs more than the whole loss on 4096 logits.


def _scaled(saved: torch.Tensor | None, g: torch.Tensor | None) -> torch.Tensor | None:
    """saved * g; the saved gradient itself when g is a CPU 1 (loss.backward()), no graph of
    the backward is built and this backward frees the graph: a full pass less. Under
    retain_graph a copy: the buffer serves the next backward, and the gradient handed out is
    the caller's and its hooks' to change in place."""
    if saved is None or g is None:
        return None
    one = g.device.type == "cpu" and not torch.is_grad_enabled() and not _fused.batched(g)
    if one and g.item() == 1.0:  # (a batched g, under vmap, has no one value to read)
        return saved.clone() if torch._C._autograd._get_current_graph_task_keep_graph() else saved
    return saved * g


# d term / d x where it is a constant: wgan's terms and the hinge generator's.
_CONSTANT_SLOPES = {NEG: -1.0, POS: 1.0}


class _MeanGrad:
    """The gradient of slope * mean(x) for an x of x's shape and dtype (x itself not kept):
    slope g / n everywhere, in stock's order (a negation, then mean's division: its bits);
    differentiable in g with create_graph=True."""

    def __init__(self, slope: float, x: torch.Tensor):
        self.slope, self.shape, self.dtype, self.n = slope, x.shape, x.dtype, x.numel()

    def of(self, g: torch.Tensor) -> torch.Tensor:
        v = ((-g if self.slope < 0 else g) / self.n).to(self.dtype)
        return v.expand(self.shape).contiguous()


def _constant_slopes(real, real_term: int, fake_term: int) -> tuple | None:
    """(slope of the real term or None, of the fake term) where every term given has a constant
    derivative: the loss is a mean's multiple, whose backward needs nothing of its forward, so
    nothing is computed, saved or kept for it, and a second backward runs, as stock's -f.mean()
    (the C++ twin: constant_slope in csrc/cpu/losses_autograd.cpp); else None."""
    sf = _CONSTANT_SLOPES.get(fake_term)
    sr = None if real is None else _CONSTANT_SLOPES.get(real_term)
    if sf is None or (real is not None and sr is None):
        return None
    return sr, sf


def _mean_grads(real, fake, real_term: int, fake_term: int) -> tuple | None:
    """(_MeanGrad of real or None, of fake) where _constant_slopes says so; else None."""
    slopes = _constant_slopes(real, real_term, fake_term)
    if slopes is None:
        return None
    return (None if real is None else _MeanGrad(slopes[0], real)), _MeanGrad(slopes[1], fake)


def _mean_grads_for(means, mask, grad) -> tuple:
    """The gradients mask asks for, of real and fake, from _mean_grads' pair."""
    return tuple(m.of(grad) if need else None for m, need in zip(means, mask, strict=True))


def _weighted_sum(a: torch.Tensor | None, w: float, b: torch.Tensor | None):
    """w * a + b over the ones of a and b that are given (None when neither is)."""
    if a is None:
        return b
    wa = a if w == 1.0 else a * w
    return wa if b is None else wa + b


class _GanLossFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, real, fake, real_term, fake_term, need_r, need_f, kernel):
        ctx.means = _mean_grads(real, fake, real_term, fake_term)
        if ctx.means is not None:
            ctx.need = (need_r, need_f)
            return kernel(real, fake, real_term, fake_term, False, False)[0]
        loss, gr, gf = kernel(real, fake, real_term, fake_term, need_r, need_f)
        ctx.save_for_backward(gr if need_r else None, gf if need_f else None)
        ctx.inputs = _fused.KeptInputs(real, fake)
        ctx.terms = (real_term, fake_term)
        return loss

    @staticmethod
    def backward(ctx, grad):
        if ctx.means is not None:
            return *_mean_grads_for(ctx.means, ctx.need, grad), *(None,) * 5
        gr, gf = ctx.saved_tensors
        if _fused.creates_graph():
            mask = (gr is not None, gf is not None)
            grads = _gan_composite_grads(*ctx.inputs.unpack(), *ctx.terms, mask, grad)
            return *grads, *(None,) * 5
        return (_scaled(gr, grad), _scaled(gf, grad), *(None,) * 5)


class _VaeLossFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, recon, target, mu, logvar, rid, beta, scale, mask, kernel):
        total, rec, kl, *grads = kernel(recon, target, mu, logvar, rid, beta, scale, mask)
        ctx.save_for_backward(*grads)
        ctx.inputs = _fused.KeptInputs(recon, target, mu, logvar)
        ctx.set_materialize_grads(False)  # an unused output's gradient: None (see _vae_backward)
        ctx.args = (rid, beta, scale)
        return total, rec, kl

    @staticmethod
    def backward(ctx, g_total, g_rec, g_kl):
        gx, gt, gm, glv = ctx.saved_tensors
        if _fused.creates_graph():
            # recon and target reach total and rec, mu and logvar total and kl: an input none of
            # whose outputs got a gradient gets None (found by a fuzz: zeros, weight decay moved it)
            rec, kl = (
                g_total is not None or g_rec is not None,
                g_total is not None or g_kl is not None,
            )
            reached = (rec, rec, kl, kl)
            mask = [g is not None and r for g, r in zip((gx, gt, gm, glv), reached, strict=True)]
            inputs = ctx.inputs.unpack()
            grads = _vae_composite_grads(inputs, *ctx.args, mask, (g_total, g_rec, g_kl))
            return *grads, *(None,) * 5
        beta = ctx.args[1]
        gr = _weighted_sum(g_total, 1.0, g_rec)
        gk = _weighted_sum(g_total, beta, g_kl)
        return (
            _scaled(gx, gr),
            _scaled(gt, gr),
            _scaled(gm, gk),
            _scaled(glv, gk),
            *(None,) * 5,
        )


def _gan_call(real, fake, real_term, fake_term, need_r, need_f, name):
    if _fused.fast_eager(real, fake):
        kernel = _registry.kernel("gan_loss", name)
        if not (need_r or need_f):
            return kernel(real, fake, real_term, fake_term, False, False)[0]
        if name == "cpu":  # the C++ autograd.Function: a few microseconds instead of tens
            return _registry.extension().gan_loss_autograd_cpu(
                fake if real is None else real, fake, real_term, fake_term, real is not None
            )
        return _GanLossFn.apply(real, fake, real_term, fake_term, need_r, need_f, kernel)
    if _constant_slopes(real, real_term, fake_term) is not None:
        need_r = need_f = False  # (the backward makes them: see _gan_setup_context)
    return torch.ops.genkern.gan_loss(real, fake, real_term, fake_term, need_r, need_f, name)[0]


def discriminator_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str = "bce", backend: str = "auto"
) -> torch.Tensor:
    """The discriminator's loss on real and fake logits (any shapes; means over each tensor).

    kind: "bce" mean(softplus(-r)) + mean(softplus(f)); "hinge" mean(relu(1 - r)) +
    mean(relu(1 + f)); "wgan" mean(f) - mean(r); "lsgan" 0.5 mean((r - 1)^2) + 0.5 mean(f^2).
    A 0-dim float32 tensor (float64 for float64 logits); 16-bit logits accumulate in float32.
    """
    loss = _fused.try_fast("gan_loss_fast", real_logits, fake_logits, kind, True, backend=backend)
    if loss is not None:
        return loss
    real_logits, fake_logits = _promoted(real_logits, fake_logits)
    real_term, fake_term = D_TERMS[_kind(kind)]
    _checks.check_floating("discriminator_loss", real_logits=real_logits, fake_logits=fake_logits)
    name = backends.resolve("discriminator_loss", backend, fake_logits)
    if _fused.stock_composite(real_logits, fake_logits):  # (after the checks, as everywhere)
        return _gan_value_torch(real_logits, fake_logits, real_term, fake_term)
    return _gan_call(
        real_logits,
        fake_logits,
        real_term,
        fake_term,
        _needs(real_logits),
        _needs(fake_logits),
        name,
    )


def generator_loss(
    fake_logits: torch.Tensor, kind: str = "bce", backend: str = "auto"
) -> torch.Tensor:
    """The generator's loss on the discriminator's logits of fakes.

    kind: "bce" mean(softplus(-f)) (non-saturating); "hinge" and "wgan" -mean(f); "lsgan"
    0.5 mean((f - 1)^2). A 0-dim float32 tensor (float64 for float64 logits).
    """
    loss = _fused.try_fast("gan_loss_fast", None, fake_logits, kind, False, backend=backend)
    if loss is not None:
        return loss
    term = G_TERMS[_kind(kind)]
    _checks.check_floating("generator_loss", fake_logits=fake_logits)
    name = backends.resolve("generator_loss", backend, fake_logits)
    if _fused.stock_composite(fake_logits):
        return _gan_value_torch(None, fake_logits, 0, term)
    return _gan_call(None, fake_logits, 0, term, False, _needs(fake_logits), name)


def vae_loss(
    recon: torch.Tensor,
    target: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    recon_loss: str = "bce",
    beta: float = 1.0,
    reduction: str = "sum",
    logits: bool = True,
    return_components: bool = False,
    backend: str = "auto",
):
    """recon term + beta * KL(N(mu, exp(logvar)) || N(0, 1)), in one fused op.

    recon term: sum of BCE-with-logits(recon, target) (recon_loss="bce", logits=True), of BCE on
    probabilities with logs clamped at -100 (logits=False), or of (recon - target)^2 ("mse");
    KL = -0.5 * sum(1 + logvar - mu^2 - exp(logvar)). reduction "sum" returns the sums, "mean"
    divides them by the batch size recon.shape[0]. return_components=True returns
    (total, recon_term, kl), each reduced the same way.
    """
    if isinstance(beta, torch.Tensor):
        # beta weighs kl outside the op, as in stock's composite: d total / d beta = kl, and
        # the result's dtype promoted with beta's (found by fuzzes: the fused total took beta
        # as a float, dropping its gradient and its dtype)
        if beta.dim() != 0:  # as_float's rule, without reading the value (a graph break)
            raise TypeError("beta must be a float, but got Tensor")
        _, rec, kl = vae_loss(
            recon, target, mu, logvar, recon_loss, 1.0, reduction, logits, True, backend
        )
        total = rec + beta * kl
        return (total, rec, kl) if return_components else total
    out = _fused.try_fast(
        "vae_loss_fast",
        recon,
        target,
        mu,
        logvar,
        recon_loss,
        beta,
        reduction,
        logits,
        return_components,
        backend=backend,
    )
    if out is not None:
        return out
    if recon_loss == "bce" and not logits:
        _refuse_mixed_probability_dtypes(recon, target)
    recon, target, mu, logvar = _promoted(recon, target, mu, logvar)
    check_vae_args(recon_loss, reduction, beta)
    _checks.check_floating("vae_loss", recon=recon, target=target, mu=mu, logvar=logvar)
    if target.shape != recon.shape:
        raise ValueError(
            f"Target size ({target.size()}) must be the same as input size ({recon.size()})"
        )
    if logvar.shape != mu.shape:
        raise ValueError(f"logvar size ({logvar.size()}) must be the same as mu size ({mu.size()})")
    scale = 1.0
    if reduction == "mean":
        if recon.dim() == 0:
            raise ValueError(
                "reduction='mean' divides by the batch size: recon must have a batch "
                "dimension, but it is 0-dimensional"
            )
        scale = 1.0 / recon.shape[0] if recon.shape[0] else float("nan")
    rid = RECON_MSE if recon_loss == "mse" else (RECON_BCE_LOGITS if logits else RECON_BCE)
    name = backends.resolve("vae_loss", backend, recon)
    if _fused.stock_composite(recon, target, mu, logvar):
        total, rec, kl = _vae_value_torch(recon, target, mu, logvar, rid, float(beta), scale)
        return (total, rec, kl) if return_components else total
    mask = [_needs(recon), _needs(target), _needs(mu), _needs(logvar)]
    if _fused.fast_eager(recon, target, mu, logvar):
        kernel = _registry.kernel("vae_loss", name)
        if any(mask):
            if name == "cpu":
                total, rec, kl = _registry.extension().vae_loss_autograd_cpu(
                    recon, target, mu, logvar, rid, float(beta), scale
                )
            else:
                total, rec, kl = _VaeLossFn.apply(
                    recon, target, mu, logvar, rid, float(beta), scale, mask, kernel
                )
        else:
            total, rec, kl = kernel(recon, target, mu, logvar, rid, float(beta), scale, mask)[:3]
    else:
        # Traced (torch.compile): with a symbolic batch size a float scale 1/N would be
        # specialized, one graph per batch size; so the op sums and the mean divides here. So
        # with beta, which a KL warm-up changes every step (found by a fuzz: a graph per beta,
        # then eager past the recompile limit): the op's total is unused, beta weighs kl here.
        per_batch = reduction == "mean" and recon.dim() > 0
        _, rec, kl, *_ = torch.ops.genkern.vae_loss(
            recon,
            target,
            mu,
            logvar,
            rid,
            1.0,
            1.0 if per_batch else scale,
            _mask_bits(mask),
            name,
        )
        if not isinstance(beta, (torch.SymFloat, float)):  # (a tensor beta returned above)
            beta = float(beta)  # a numpy scalar, an array to Dynamo: would promote to float64
        total = rec + beta * kl
        if per_batch:
            n = recon.shape[0]
            total, rec, kl = total / n, rec / n, kl / n
    return (total, rec, kl) if return_components else total


def _promoted(*tensors):
    """Floating tensors of mixed dtypes in their common one, as stock's composites compute (found
    by fuzzes: a float32 eps with bfloat16 mu and logvar, as autocast makes them, was refused; so
    were bfloat16 real and float32 fake logits, and a bfloat16 recon with a float32 target);
    anything else as given, for the checks to judge."""
    given = [t for t in tensors if isinstance(t, torch.Tensor)]
    if not all(t.is_floating_point() for t in given) or len({t.dtype for t in given}) < 2:
        return tensors
    common = functools.reduce(torch.promote_types, (t.dtype for t in given))
    return tuple(t.to(common) if isinstance(t, torch.Tensor) else t for t in tensors)


_TYPE_NAMES = {
    torch.float32: "Float",
    torch.float64: "Double",
    torch.float16: "Half",
    torch.bfloat16: "BFloat16",
}


def _refuse_mixed_probability_dtypes(recon, target) -> None:
    """F.binary_cross_entropy on probabilities promotes nothing (its logits form and mse_loss
    do): its error, in its words."""
    if (
        isinstance(recon, torch.Tensor)
        and isinstance(target, torch.Tensor)
        and recon.is_floating_point()
        and target.is_floating_point()
        and recon.dtype != target.dtype
    ):
        found = _TYPE_NAMES.get(target.dtype, target.dtype)
        expected = _TYPE_NAMES.get(recon.dtype, recon.dtype)
        raise RuntimeError(f"Found dtype {found} but expected {expected}")


def reparameterize(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    eps: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """mu + eps * exp(logvar / 2); eps ~ N(0, 1) drawn with `generator` when not given.

    On the cpu backend in eager mode a missing eps is drawn inside the fused kernel (Philox4x32-10
    keyed by 64 bits taken from `generator`, or torch's default CPU generator, then Box-Muller):
    the same distribution, reproducible under the same seed (torch.manual_seed or the generator's
    own), but not bitwise torch.randn's draws. Elsewhere (other backends, torch.compile) eps is
    torch.randn's. A second derivative (create_graph=True) treats a drawn eps as a constant.
    """
    z = _fused.try_fast("reparameterize_fast", mu, logvar, eps, generator, backend=backend)
    if z is not None:
        return z
    mu, logvar, eps = _promoted(mu, logvar, eps)
    _checks.check_floating("reparameterize", mu=mu, logvar=logvar, eps=eps)
    if logvar.shape != mu.shape:
        raise ValueError(f"logvar size ({logvar.size()}) must be the same as mu size ({mu.size()})")
    if eps is not None and eps.shape != mu.shape:
        raise ValueError(f"eps size ({eps.size()}) must be the same as mu size ({mu.size()})")
    name = backends.resolve("reparameterize", backend, mu)
    if _fused.stock_composite(mu, logvar, eps):
        if eps is None:
            eps = torch.randn(mu.shape, dtype=mu.dtype, device=mu.device, generator=generator)
        return _reparam_torch(mu, logvar, eps)[0]
    if name == "cpu" and _fused.fast_eager(mu, logvar, eps):
        return _registry.extension().reparameterize_eager_cpu(mu, logvar, eps, generator)
    if eps is None:
        eps = torch.randn(mu.shape, dtype=mu.dtype, device=mu.device, generator=generator)
    z, _ = torch.ops.genkern.reparameterize(mu, logvar, eps, name)
    return z


# ---- the custom ops --------------------------------------------------------------------------


def _loss_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _grad_or_empty(t: torch.Tensor | None, need: bool, like: torch.Tensor) -> torch.Tensor:
    if t is not None and need:
        return t.new_empty(t.shape)  # contiguous, the kernels' layout
    return like.new_empty(0)


@torch.library.custom_op("genkern::gan_loss", mutates_args=())
def _gan_loss(
    real: torch.Tensor | None,
    fake: torch.Tensor,
    real_term: int,
    fake_term: int,
    need_grad_real: bool,
    need_grad_fake: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    fwd = _registry.kernel("gan_loss", backend)
    loss, gr, gf = fwd(real, fake, real_term, fake_term, need_grad_real, need_grad_fake)
    gr = gr.contiguous() if need_grad_real and real is not None else fake.new_empty(0)
    gf = gf.contiguous() if need_grad_fake else fake.new_empty(0)
    return loss, gr, gf


@_gan_loss.register_fake
def _(real, fake, real_term, fake_term, need_grad_real, need_grad_fake, backend):
    loss = fake.new_empty((), dtype=_loss_dtype(fake))
    return (
        loss,
        _grad_or_empty(real, need_grad_real, fake),
        _grad_or_empty(fake, need_grad_fake, fake),
    )


def _gan_setup_context(ctx, inputs, output):
    real, fake, real_term, fake_term, need_r, need_f, _ = inputs
    _, gr, gf = output
    ctx.mark_non_differentiable(gr, gf)  # the saved gradients: none of theirs, zeros or not
    ctx.set_materialize_grads(False)
    ctx.means = _mean_grads(real, fake, real_term, fake_term)  # (then no gradient was made)
    if ctx.means is not None:
        return
    ctx.save_for_backward(gr, gf)
    ctx.inputs = _fused.KeptInputs(real, fake)
    ctx.need = (real is not None and need_r, need_f)
    ctx.terms = (real_term, fake_term)


def _gan_backward(ctx, grad, _gr, _gf):
    if grad is None:  # no gradient reached the loss (grads are not materialized as zeros)
        return (None,) * 7
    if ctx.means is not None:
        mask = (ctx.means[0] is not None and ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        return *_mean_grads_for(ctx.means, mask, grad), *(None,) * 5
    gr, gf = ctx.saved_tensors
    need_r, need_f = ctx.need
    mask = (need_r and ctx.needs_input_grad[0], need_f and ctx.needs_input_grad[1])
    if _fused.creates_graph():
        grads = _gan_composite_grads(*ctx.inputs.unpack(), *ctx.terms, mask, grad)
        return *grads, *(None,) * 5
    return (gr * grad if mask[0] else None, gf * grad if mask[1] else None, *(None,) * 5)


_gan_loss.register_autograd(_gan_backward, setup_context=_gan_setup_context)


def _mask_bits(mask: list[bool]) -> int:
    """The op's gradient mask (recon, target, mu, logvar) as bits: torch.jit.trace records no
    list of bools (found by a fuzz: tracing vae_loss failed)."""
    return sum(1 << i for i, m in enumerate(mask) if m)


def _mask_of(bits: int) -> list[bool]:
    return [bool(bits >> i & 1) for i in range(4)]


@torch.library.custom_op("genkern::vae_loss", mutates_args=())
def _vae_loss(
    recon: torch.Tensor,
    target: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    recon_loss: int,
    beta: float,
    scale: float,
    mask_bits: int,
    backend: str,
) -> tuple[
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor
]:
    fwd = _registry.kernel("vae_loss", backend)
    mask = _mask_of(mask_bits)
    total, rec, kl, *grads = fwd(recon, target, mu, logvar, recon_loss, beta, scale, mask)
    grads = [g.contiguous() if m else recon.new_empty(0) for g, m in zip(grads, mask, strict=True)]
    return (total, rec, kl, *grads)


@_vae_loss.register_fake
def _(recon, target, mu, logvar, recon_loss, beta, scale, mask_bits, backend):
    dt = _loss_dtype(recon)
    mask = _mask_of(mask_bits)
    scalars = [recon.new_empty((), dtype=dt) for _ in range(3)]
    grads = [
        _grad_or_empty(t, m, recon) for t, m in zip((recon, target, mu, logvar), mask, strict=True)
    ]
    return (*scalars, *grads)


def _vae_setup_context(ctx, inputs, output):
    ctx.mark_non_differentiable(*output[3:])  # the saved gradients
    # an output nobody used sends None, not zeros: 0 times an infinite saved gradient (logvar of
    # 100 in float32) would be NaN where no gradient flows
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(*output[3:])
    ctx.inputs = _fused.KeptInputs(*inputs[:4])
    ctx.mask = _mask_of(inputs[7])
    ctx.args = (inputs[4], inputs[5], inputs[6])  # recon_loss, beta, scale


def _vae_backward(ctx, g_total, g_rec, g_kl, *_):
    gx, gt, gm, glv = ctx.saved_tensors
    beta = ctx.args[1]
    gr = _weighted_sum(g_total, 1.0, g_rec)  # d/d(recon term): through total and recon
    gk = _weighted_sum(g_total, beta, g_kl)  # d/d(kl term): through total and kl
    mask = [
        m and n and g is not None
        for m, n, g in zip(ctx.mask, ctx.needs_input_grad[:4], (gr, gr, gk, gk), strict=True)
    ]
    if _fused.creates_graph():
        grads = _vae_composite_grads(ctx.inputs.unpack(), *ctx.args, mask, (g_total, g_rec, g_kl))
        return *grads, *(None,) * 5
    return (
        gx * gr if mask[0] else None,
        gt * gr if mask[1] else None,
        gm * gk if mask[2] else None,
        glv * gk if mask[3] else None,
        *(None,) * 5,
    )


_vae_loss.register_autograd(_vae_backward, setup_context=_vae_setup_context)


@torch.library.custom_op("genkern::reparameterize", mutates_args=())
def _reparameterize(
    mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    fwd = _registry.kernel("reparameterize", backend)
    z, std = fwd(mu, logvar, eps)
    return z.contiguous(), std.contiguous()


@_reparameterize.register_fake
def _(mu, logvar, eps, backend):
    return mu.new_empty(mu.shape), mu.new_empty(mu.shape)


def _reparam_setup_context(ctx, inputs, output):
    _, _, eps, _ = inputs
    _, std = output
    ctx.save_for_backward(eps, std)


def _reparam_backward(ctx, g_z, g_std):
    eps, std = ctx.saved_tensors
    need_mu, need_lv, need_eps = ctx.needs_input_grad[:3]
    g_lv = (g_z * eps + g_std) * std * 0.5 if need_lv else None
    return (g_z.clone() if need_mu else None, g_lv, g_z * std if need_eps else None, None)


_reparameterize.register_autograd(_reparam_backward, setup_context=_reparam_setup_context)


# ---- the "torch" backend: the same math in stock ops ------------------------------------------


def _acc(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float64 if t.dtype == torch.float64 else torch.float32)


def _softplus(x):
    return torch.clamp_min(x, 0) + torch.log1p(torch.exp(-x.abs()))


def _term_value_torch(x: torch.Tensor, term: int) -> torch.Tensor:
    """A term's value, elementwise, by stock's differentiable ops: autograd's derivative of it is
    the kernels' at every finite x (so it serves the second derivative's composite)."""
    if term == SOFTPLUS_NEG:
        return -F.logsigmoid(x)
    if term == SOFTPLUS_POS:
        return -F.logsigmoid(-x)
    if term in (HINGE_REAL, HINGE_FAKE):
        return torch.relu(1.0 - x if term == HINGE_REAL else 1.0 + x)
    if term == NEG:
        return -x
    if term == POS:
        return x
    if term == SQ_ONE:
        return 0.5 * (x - 1) ** 2
    return 0.5 * x * x


def _term_torch(x: torch.Tensor, term: int):
    """(value, derivative) of a term, elementwise, in x's dtype."""
    if term == SOFTPLUS_NEG:
        d = -torch.sigmoid(-x)
    elif term == SOFTPLUS_POS:
        d = torch.sigmoid(x)
    elif term in (HINGE_REAL, HINGE_FAKE):
        sign = -1.0 if term == HINGE_REAL else 1.0
        d = torch.where(1.0 + sign * x <= 0, 0.0, sign).to(x.dtype)
    elif term == NEG:
        d = torch.full_like(x, -1.0)
    elif term == POS:
        d = torch.ones_like(x)
    elif term == SQ_ONE:
        d = x - 1
    else:
        d = x.clone()
    return _term_value_torch(x, term), d


# ---- second derivatives: stock's composite of each loss, differentiated by autograd -----------
# (the C++ eager paths' twins: csrc/cpu/losses_autograd.cpp, stock_gan_loss and stock_vae_loss)


def _gan_value_torch(real, fake, real_term: int, fake_term: int) -> torch.Tensor:
    loss = _term_value_torch(_acc(fake), fake_term).mean()
    return loss if real is None else _term_value_torch(_acc(real), real_term).mean() + loss


def _vae_value_torch(recon, target, mu, logvar, rid: int, beta: float, scale: float):
    wide = any(t.dtype == torch.float64 for t in (recon, target, mu, logvar))
    x, t, m, lv = (
        v.to(torch.float64 if wide else torch.float32) for v in (recon, target, mu, logvar)
    )
    if rid == RECON_BCE_LOGITS:
        rec = F.binary_cross_entropy_with_logits(x, t, reduction="sum")
    elif rid == RECON_BCE:
        rec = F.binary_cross_entropy(x, t, reduction="sum")
    else:
        rec = ((x - t) ** 2).sum()
    rec, kl = rec * scale, (-0.5 * (1 + lv - m * m - lv.exp())).sum() * scale
    return rec + beta * kl, rec, kl


def _gan_composite_grads(real, fake, real_term, fake_term, mask, grad):
    with torch.autocast(fake.device.type, enabled=False):  # (as the kernels: float32 or 64)
        return _fused.differentiable_grads(
            lambda r, f: _gan_value_torch(r, f, real_term, fake_term), (real, fake), mask, grad
        )


def _vae_composite_grads(inputs, rid, beta, scale, mask, grads):
    with torch.autocast(inputs[0].device.type, enabled=False):  # (stock's BCE refuses autocast)
        return _fused.differentiable_grads(
            lambda *v: _vae_value_torch(*v, rid, beta, scale), inputs, mask, grads
        )


def _gan_torch(real, fake, real_term, fake_term, need_r, need_f):
    loss = torch.zeros((), dtype=_loss_dtype(fake), device=fake.device)
    grads = []
    for x, term, need in ((real, real_term, need_r), (fake, fake_term, need_f)):
        if x is None:
            grads.append(None)
            continue
        v, d = _term_torch(_acc(x), term)
        loss = loss + v.sum() / x.numel() if x.numel() else loss + float("nan")
        grads.append((d / x.numel()).to(x.dtype) if need else None)
    return loss, grads[0], grads[1]


def _recon_torch(x, t, rid):
    if rid == RECON_BCE_LOGITS:
        a = 1 - t
        pos = _softplus(-x) + torch.where(a == 0, 0.0, a * x)
        neg = _softplus(x) - torch.where(t == 0, 0.0, t * x)
        return torch.where(x > 0, pos, neg), torch.sigmoid(x) - t, -x
    if rid == RECON_BCE:
        # torch's refusal where it costs no device sync; NaN passes (and propagates)
        if x.device.type == "cpu" and bool(((x < 0) | (x > 1)).any()):
            raise RuntimeError("all elements of input should be between 0 and 1")
        lx, l1x = torch.log(x).clamp_min(-100), torch.log(1 - x).clamp_min(-100)
        dx = (x - t) / ((1 - x) * x).clamp_min(1e-12)
        return -(t * lx + (1 - t) * l1x), dx, l1x - lx
    r = x - t
    return r * r, 2 * r, -2 * r


def _vae_torch(recon, target, mu, logvar, rid, beta, scale, mask):
    x, t, m, lv = (_acc(v) for v in (recon, target, mu, logvar))
    v, dx, dt = _recon_torch(x, t, rid)
    e = torch.exp(lv)
    rec = v.sum() * scale
    kl = (-0.5 * (1 + lv - m * m - e)).sum() * scale
    grads = [dx, dt, m, 0.5 * (e - 1)]
    grads = [
        (g * scale).to(ref.dtype) if need else None
        for g, ref, need in zip(grads, (recon, target, mu, logvar), mask, strict=True)
    ]
    return (rec + beta * kl, rec, kl, *grads)


def _reparam_torch(mu, logvar, eps):
    std = torch.exp(0.5 * _acc(logvar))
    return (_acc(mu) + _acc(eps) * std).to(mu.dtype), std.to(mu.dtype)


def _gan_cpu(real, fake, real_term, fake_term, need_r, need_f):
    return _registry.extension().gan_loss_cpu(real, fake, real_term, fake_term, need_r, need_f)


def _vae_cpu(recon, target, mu, logvar, rid, beta, scale, mask):
    return _registry.extension().vae_loss_cpu(recon, target, mu, logvar, rid, beta, scale, mask)


def _reparam_cpu(mu, logvar, eps):
    return _registry.extension().reparameterize_cpu(mu, logvar, eps)


def _gan_cuda(real, fake, real_term, fake_term, need_r, need_f):
    return _registry.extension().gan_loss_cuda(real, fake, real_term, fake_term, need_r, need_f)


def _vae_cuda(recon, target, mu, logvar, rid, beta, scale, mask):
    return _registry.extension().vae_loss_cuda(recon, target, mu, logvar, rid, beta, scale, mask)


def _reparam_cuda(mu, logvar, eps):
    return _registry.extension().reparameterize_cuda(mu, logvar, eps)


_registry.register(
    "gan_loss",
    torch=_gan_torch,
    cpu=_gan_cpu,
    cuda=_gan_cuda,
    triton="genkern.triton.losses:gan_loss_triton",
)
_registry.register(
    "vae_loss",
    torch=_vae_torch,
    cpu=_vae_cpu,
    cuda=_vae_cuda,
    triton="genkern.triton.losses:vae_loss_triton",
)
_registry.register(
    "reparameterize",
    torch=_reparam_torch,
    cpu=_reparam_cpu,
    cuda=_reparam_cuda,
    triton="genkern.triton.losses:reparameterize_triton",
)
