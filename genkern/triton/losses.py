"""Fused GAN and VAE losses in Triton: the mirror of csrc/include/genkern/losses.h.

Term ids (constexpr `TERM`) and reconstruction ids (`RECON`) are those of genkern/ops/losses.py.
Everything is computed in float32. Deterministic two-level reduction, no atomics: each program
writes the float32 sum of its BLOCK elements to a partials buffer, then one program sums the
partials in a fixed order (a BLOCK-wide running vector, then tl.sum). The gradients are written to
fresh tensors in the same pass as the loss.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genkern import backends
from genkern.ops import losses as _L

_BLOCK = 1024
SOFTPLUS_NEG = tl.constexpr(_L.SOFTPLUS_NEG)
SOFTPLUS_POS = tl.constexpr(_L.SOFTPLUS_POS)
HINGE_REAL = tl.constexpr(_L.HINGE_REAL)
HINGE_FAKE = tl.constexpr(_L.HINGE_FAKE)
NEG = tl.constexpr(_L.NEG)
POS = tl.constexpr(_L.POS)
SQ_ONE = tl.constexpr(_L.SQ_ONE)
RECON_BCE_LOGITS = tl.constexpr(_L.RECON_BCE_LOGITS)
RECON_BCE = tl.constexpr(_L.RECON_BCE)


@triton.jit
def log1p(e):
    """log(1 + e), accurate for small e (Goldberg's trick; no tl.math.log1p needed)."""
    u = 1.0 + e
    return tl.where(u == 1.0, e, tl.log(u) * e / (u - 1.0))


@triton.jit
def softplus(x):
    """max(x, 0) + log1p(exp(-|x|)): softplus(+inf) = inf, softplus(-inf) = 0, NaN -> NaN."""
    return tl.where(x > 0.0, x, 0.0) + log1p(tl.exp(-tl.abs(x)))


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def loss_term(x, TERM: tl.constexpr):
    """(value, derivative) of a GAN loss term at x (float32)."""
    if TERM == SOFTPLUS_NEG:
        v = softplus(-x)
        d = -sigmoid(-x)
    elif TERM == SOFTPLUS_POS:
        v = softplus(x)
        d = sigmoid(x)
    elif TERM == HINGE_REAL:
        t = 1.0 - x
        v = tl.where(t < 0.0, 0.0, t)
        d = tl.where(t <= 0.0, 0.0, -1.0)
    elif TERM == HINGE_FAKE:
        t = 1.0 + x
        v = tl.where(t < 0.0, 0.0, t)
        d = tl.where(t <= 0.0, 0.0, 1.0)
    elif TERM == NEG:
        v = -x
        d = tl.zeros_like(x) - 1.0  # not x * 0 - 1: NaN at x = +-inf (the composite's is -1)
    elif TERM == POS:
        v = x
        d = tl.zeros_like(x) + 1.0
    elif TERM == SQ_ONE:
        d = x - 1.0
        v = 0.5 * d * d
    else:
        d = x
        v = 0.5 * x * x
    return v, d


@triton.jit
def recon_term(x, t, RECON: tl.constexpr):
    """(value, d/dx, d/dt) of the reconstruction loss at (x, t) (float32)."""
    if RECON == RECON_BCE_LOGITS:
        a = 1.0 - t
        pos = softplus(-x) + tl.where(a == 0.0, 0.0, a * x)
        neg = softplus(x) - tl.where(t == 0.0, 0.0, t * x)
        v = tl.where(x > 0.0, pos, neg)
        dx = sigmoid(x) - t
        dt = -x
    elif RECON == RECON_BCE:
        # clamps that keep NaN (tl.maximum drops it: a probability outside [0, 1] or NaN gave
        # a finite loss here, NaN on the other backends)
        lx = tl.log(x)
        lx = tl.where(lx < -100.0, -100.0, lx)
        l1x = tl.log(1.0 - x)
        l1x = tl.where(l1x < -100.0, -100.0, l1x)
        den = (1.0 - x) * x
        den = tl.where(den < 1e-12, 1e-12, den)
        dx = (x - t) / den
        dt = l1x - lx
        v = -(t * lx + (1.0 - t) * l1x)
    else:
        r = x - t
        v = r * r
        dx = 2.0 * r
        dt = -2.0 * r
    return v, dx, dt


@triton.jit
def _gan_term_kernel(
    x_ptr,
    g_ptr,
    part_ptr,
    n,
    gscale,
    TERM: tl.constexpr,
    NEED_GRAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    v, d = loss_term(x, TERM)
    if NEED_GRAD:
        tl.store(g_ptr + offs, (d * gscale).to(g_ptr.dtype.element_ty), mask=mask)
    tl.store(part_ptr + pid, tl.sum(tl.where(mask, v, 0.0), axis=0))


@triton.jit
def _recon_kernel(
    x_ptr,
    t_ptr,
    gx_ptr,
    gt_ptr,
    part_ptr,
    n,
    scale,
    RECON: tl.constexpr,
    NEED_GX: tl.constexpr,
    NEED_GT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.5).to(tl.float32)
    t = tl.load(t_ptr + offs, mask=mask, other=0.5).to(tl.float32)
    v, dx, dt = recon_term(x, t, RECON)
    if NEED_GX:
        tl.store(gx_ptr + offs, (dx * scale).to(gx_ptr.dtype.element_ty), mask=mask)
    if NEED_GT:
        tl.store(gt_ptr + offs, (dt * scale).to(gt_ptr.dtype.element_ty), mask=mask)
    tl.store(part_ptr + pid, tl.sum(tl.where(mask, v, 0.0), axis=0))


@triton.jit
def _kl_kernel(
    m_ptr,
    l_ptr,
    gm_ptr,
    gl_ptr,
    part_ptr,
    n,
    scale,
    NEED_GM: tl.constexpr,
    NEED_GL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    lv = tl.load(l_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    e = tl.exp(lv)
    if NEED_GM:
        tl.store(gm_ptr + offs, (m * scale).to(gm_ptr.dtype.element_ty), mask=mask)
    if NEED_GL:
        tl.store(gl_ptr + offs, (0.5 * (e - 1.0) * scale).to(gl_ptr.dtype.element_ty), mask=mask)
    v = -0.5 * (1.0 + lv - m * m - e)
    tl.store(part_ptr + pid, tl.sum(tl.where(mask, v, 0.0), axis=0))


@triton.jit
def _sum_partials(part_ptr, n, BLOCK: tl.constexpr):
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        acc += tl.load(part_ptr + offs, mask=offs < n, other=0.0)
    return tl.sum(acc, axis=0)


@triton.jit
def _finish_kernel(pa_ptr, na, sa, pb_ptr, nb, sb, wb, out_ptr, BLOCK: tl.constexpr):
    """out[0] = sa * sum(a) + wb * sb * sum(b); out[1] = sa * sum(a); out[2] = sb * sum(b)."""
    a = _sum_partials(pa_ptr, na, BLOCK) * sa
    b = _sum_partials(pb_ptr, nb, BLOCK) * sb
    tl.store(out_ptr, a + wb * b)
    tl.store(out_ptr + 1, a)
    tl.store(out_ptr + 2, b)


@triton.jit
def _reparam_kernel(m_ptr, l_ptr, e_ptr, z_ptr, s_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    lv = tl.load(l_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    e = tl.load(e_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.exp(0.5 * lv)
    tl.store(s_ptr + offs, s.to(s_ptr.dtype.element_ty), mask=mask)
    tl.store(z_ptr + offs, (m + e * s).to(z_ptr.dtype.element_ty), mask=mask)


def _device_ctx(t):
    if t.is_cuda:
        return torch.cuda.device(t.device)
    import contextlib

    return contextlib.nullcontext()


def _term_partials(x, term, need_grad):
    x = x.contiguous()
    n = x.numel()
    nblocks = max(1, triton.cdiv(n, _BLOCK))
    part = torch.zeros(nblocks, dtype=torch.float32, device=x.device)
    grad = torch.empty_like(x) if need_grad else None
    if n:
        _gan_term_kernel[(nblocks,)](
            x,
            grad if need_grad else x,
            part,
            n,
            1.0 / n,
            TERM=term,
            NEED_GRAD=need_grad,
            BLOCK=_BLOCK,
        )
    return part, grad, (1.0 / n if n else float("nan"))


def gan_loss_triton(real, fake, real_term, fake_term, need_r, need_f):
    with _device_ctx(fake):
        pf, gf, sf = _term_partials(fake, fake_term, need_f)
        if real is not None:
            pr, gr, sr = _term_partials(real, real_term, need_r)
        else:
            pr, gr, sr = pf, None, 0.0
        out = torch.empty(3, dtype=torch.float32, device=fake.device)
        _finish_kernel[(1,)](
            pf,
            pf.numel(),
            sf,
            pr,
            pr.numel() if real is not None else 0,
            sr,
            1.0,
            out,
            BLOCK=_BLOCK,
        )
    return out[0].clone(), gr, gf


def vae_loss_triton(recon, target, mu, logvar, rid, beta, scale, mask):
    x, t = recon.contiguous(), target.contiguous()
    m, lv = mu.contiguous(), logvar.contiguous()
    grads = [
        torch.empty_like(v) if need else None for v, need in zip((x, t, m, lv), mask, strict=True)
    ]
    with _device_ctx(x):
        n, k = x.numel(), m.numel()
        nb_r, nb_k = max(1, triton.cdiv(n, _BLOCK)), max(1, triton.cdiv(k, _BLOCK))
        pr = torch.zeros(nb_r, dtype=torch.float32, device=x.device)
        pk = torch.zeros(nb_k, dtype=torch.float32, device=x.device)
        if n:
            _recon_kernel[(nb_r,)](
                x,
                t,
                grads[0] if mask[0] else x,
                grads[1] if mask[1] else x,
                pr,
                n,
                scale,
                RECON=rid,
                NEED_GX=mask[0],
                NEED_GT=mask[1],
                BLOCK=_BLOCK,
            )
        if k:
            _kl_kernel[(nb_k,)](
                m,
                lv,
                grads[2] if mask[2] else m,
                grads[3] if mask[3] else m,
                pk,
                k,
                scale,
                NEED_GM=mask[2],
                NEED_GL=mask[3],
                BLOCK=_BLOCK,
            )
        out = torch.empty(3, dtype=torch.float32, device=x.device)
        _finish_kernel[(1,)](pr, nb_r, scale, pk, nb_k, scale, beta, out, BLOCK=_BLOCK)
    return (out[0].clone(), out[1].clone(), out[2].clone(), *grads)


def reparameterize_triton(mu, logvar, eps):
    m, lv, e = mu.contiguous(), logvar.contiguous(), eps.contiguous()
    z, s = torch.empty_like(m), torch.empty_like(m)
    n = m.numel()
    if n:
        with _device_ctx(m):
            _reparam_kernel[(triton.cdiv(n, _BLOCK),)](m, lv, e, z, s, n, BLOCK=_BLOCK)
    return z, s


__all__ = ["gan_loss_triton", "vae_loss_triton", "reparameterize_triton", "backends"]
