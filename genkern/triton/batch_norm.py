"""Triton kernels of batch_norm + activation (forward and backward), NCHW and channels_last.

x is seen as [N, C, S] (S = H * W) with strides (s_n, s_c, s_s): (C*S, S, 1) for NCHW, (S*C, 1, C)
for channels_last. Statistics: one program per channel, per-block mean / M2 merged with Chan's
formula in a fixed order (deterministic, no atomics). The backward: one reduction program per
channel (sum g, sum g * (x - mean), the activation's backward fused) + one elementwise pass.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genkern import backends
from genkern.triton import activations as act_lib

_INTERPRET = backends.triton_interpreter()
_RBLOCK = 64 if _INTERPRET else 1024
_EBLOCK = 256 if _INTERPRET else 1024


@triton.jit
def _bn_stats_kernel(x_ptr, mean_ptr, var_ptr, N, S, s_n, s_c, s_s, BLOCK: tl.constexpr):
    c = tl.program_id(0).to(tl.int64)
    M = N * S
    offs = tl.arange(0, BLOCK)
    # statistics of x - ref (ref: the channel's first element): a constant channel's mean comes
    # out as its value exactly, and values far from 0 keep their low bits
    ref = tl.load(x_ptr + c * s_c).to(tl.float32)
    cnt = 0.0
    mean = 0.0
    m2 = 0.0
    for start in range(0, M, BLOCK):
        m = start + offs
        mask = m < M
        n = m // S
        s = m % S
        v = tl.load(x_ptr + n * s_n + c * s_c + s * s_s, mask=mask, other=0.0).to(tl.float32)
        v = tl.where(mask, v - ref, 0.0)
        nb = tl.minimum(M - start, BLOCK).to(tl.float32)
        bmean = tl.sum(v, axis=0) / nb
        d = tl.where(mask, v - bmean, 0.0)
        bm2 = tl.sum(d * d, axis=0)
        tot = cnt + nb
        delta = bmean - mean
        mean = mean + delta * (nb / tot)
        # (delta * (delta * w): delta * delta overflows where w is 0, the first block, inf * 0)
        m2 = m2 + bm2 + delta * (delta * (cnt * nb / tot))
        cnt = tot
    tl.store(mean_ptr + c, ref + mean)
    tl.store(var_ptr + c, m2 / cnt)


@triton.jit
def _bn_apply_kernel(
    x_ptr,
    y_ptr,
    pre_ptr,
    mean_ptr,
    scale_ptr,
    bias_ptr,
    total,
    C,
    S,
    slope,
    CHANNELS_LAST: tl.constexpr,
    ACT: tl.constexpr,
    SAVE_PRE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < total
    if CHANNELS_LAST:
        c = i % C
    else:
        c = (i // S) % C
    x = tl.load(x_ptr + i, mask=mask, other=0.0).to(tl.float32)
    mu = tl.load(mean_ptr + c, mask=mask, other=0.0)
    a = tl.load(scale_ptr + c, mask=mask, other=0.0)
    b = tl.load(bias_ptr + c, mask=mask, other=0.0)
    z = (x - mu) * a + b  # centered first, as the composite: a constant channel gives b exactly
    if SAVE_PRE:
        tl.store(pre_ptr + i, z.to(pre_ptr.dtype.element_ty), mask=mask)
    y = act_lib.act_forward(z, ACT, slope)
    tl.store(y_ptr + i, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bn_bwd_reduce_kernel(
    gy_ptr,
    s_ptr,
    x_ptr,
    mean_ptr,
    sum_g_ptr,
    sum_gx_ptr,
    N,
    S,
    s_n,
    s_c,
    s_s,
    slope,
    ACT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    c = tl.program_id(0).to(tl.int64)
    M = N * S
    offs = tl.arange(0, BLOCK)
    mu = tl.load(mean_ptr + c).to(tl.float32)
    acc_g = tl.zeros([BLOCK], dtype=tl.float32)
    acc_gx = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, M, BLOCK):
        m = start + offs
        mask = m < M
        off = (m // S) * s_n + c * s_c + (m % S) * s_s
        gy = tl.load(gy_ptr + off, mask=mask, other=0.0).to(tl.float32)
        if ACT == 0:
            g = gy
        else:
            sv = tl.load(s_ptr + off, mask=mask, other=0.0).to(tl.float32)
            g = act_lib.act_backward(gy, sv, ACT, slope)
        g = tl.where(mask, g, 0.0)
        x = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
        acc_g += g
        acc_gx += g * (x - mu)
    tl.store(sum_g_ptr + c, tl.sum(acc_g, axis=0))
    tl.store(sum_gx_ptr + c, tl.sum(acc_gx, axis=0))


@triton.jit
def _bn_bwd_apply_kernel(
    gy_ptr,
    s_ptr,
    x_ptr,
    gx_ptr,
    ka_ptr,
    kb_ptr,
    kc_ptr,
    mean_ptr,
    total,
    C,
    S,
    slope,
    CHANNELS_LAST: tl.constexpr,
    ACT: tl.constexpr,
    TRAINING: tl.constexpr,
    BLOCK: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < total
    if CHANNELS_LAST:
        c = i % C
    else:
        c = (i // S) % C
    gy = tl.load(gy_ptr + i, mask=mask, other=0.0).to(tl.float32)
    if ACT == 0:
        g = gy
    else:
        sv = tl.load(s_ptr + i, mask=mask, other=0.0).to(tl.float32)
        g = act_lib.act_backward(gy, sv, ACT, slope)
    a = tl.load(ka_ptr + c, mask=mask, other=0.0)
    if TRAINING:
        x = tl.load(x_ptr + i, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(kb_ptr + c, mask=mask, other=0.0)
        d = tl.load(kc_ptr + c, mask=mask, other=0.0)
        m = tl.load(mean_ptr + c, mask=mask, other=0.0)
        out = a * (g + b * (x - m) + d)  # cancels at g's scale, before the scaling (as torch)
    else:  # no 0 * x term: an inf or NaN in x must not make the gradient NaN
        out = a * g
    tl.store(gx_ptr + i, out.to(gx_ptr.dtype.element_ty), mask=mask)


def _view(x: torch.Tensor):
    """(channels_last, N, C, S, strides (s_n, s_c, s_s)) of a dense x."""
    n, c = x.shape[0], x.shape[1]
    s = x.numel() // max(n * c, 1)
    cl = x.dim() == 4 and not x.is_contiguous()
    return cl, n, c, s, ((s * c, 1, c) if cl else (c * s, s, 1))


def _f32(t, c, fill, device):
    return (t.float() if t is not None else torch.full((c,), fill, device=device)).contiguous()


def batch_norm_act_forward_triton(x, weight, bias, rm, rv, training, eps, act, slope, save_preact):
    cl, n, c, s, strides = _view(x)
    if training:
        mean = torch.empty(c, device=x.device, dtype=torch.float32)
        var = torch.empty(c, device=x.device, dtype=torch.float32)
        _bn_stats_kernel[(c,)](x, mean, var, n, s, *strides, BLOCK=_RBLOCK)
    else:
        mean, var = rm.float().contiguous(), rv.float().contiguous()
    invstd = torch.rsqrt(var.double() + eps)
    w, b = _f32(weight, c, 1.0, x.device).double(), _f32(bias, c, 0.0, x.device).double()
    scale = (w * invstd).float()
    y = torch.empty_like(x)
    pre = torch.empty_like(x) if save_preact else y
    total = x.numel()
    _bn_apply_kernel[(triton.cdiv(total, _EBLOCK),)](
        x,
        y,
        pre,
        mean,
        scale,
        b.float(),
        total,
        c,
        s,
        slope,
        CHANNELS_LAST=cl,
        ACT=act,
        SAVE_PRE=save_preact,
        BLOCK=_EBLOCK,
    )
    st = torch.float32 if x.dtype != torch.float64 else x.dtype
    return (y, mean.to(st), invstd.to(st), var.to(st), pre if save_preact else None)


def batch_norm_act_backward_triton(
    grad_y, saved, x, weight, mean, invstd, training, act, slope, mask
):
    cl, n, c, s, strides = _view(x)
    fmt = torch.channels_last if cl else torch.contiguous_format
    gy = grad_y.contiguous(memory_format=fmt)
    sv = saved.contiguous(memory_format=fmt) if saved is not None and act != 0 else gy
    mean32 = mean.float().contiguous()
    sum_g = torch.empty(c, device=x.device, dtype=torch.float32)
    sum_gx = torch.empty(c, device=x.device, dtype=torch.float32)
    _bn_bwd_reduce_kernel[(c,)](
        gy, sv, x, mean32, sum_g, sum_gx, n, s, *strides, slope, ACT=act, BLOCK=_RBLOCK
    )
    inv = invstd.double()
    gw = sum_gx.double() * inv  # cast once, to the parameters' dtype, by the op (_grads_out)
    gb = sum_g
    gx = None
    if mask[0]:
        count = n * s
        w = _f32(weight, c, 1.0, x.device).double()
        a = w * inv
        if training:
            bcoef = -inv * (sum_gx.double() * inv / count)
            kc = -(sum_g.double() / count)
        else:
            bcoef, kc = torch.zeros_like(a), torch.zeros_like(a)
        gx = torch.empty_like(x)
        total = x.numel()
        _bn_bwd_apply_kernel[(triton.cdiv(total, _EBLOCK),)](
            gy,
            sv,
            x,
            gx,
            a.float(),
            bcoef.float(),
            kc.float(),
            mean32,
            total,
            c,
            s,
            slope,
            CHANNELS_LAST=cl,
            ACT=act,
            TRAINING=bool(training),
            BLOCK=_EBLOCK,
        )
    return gx if gx is not None else x.new_empty(0), gw, gb
