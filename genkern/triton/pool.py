"""Triton kernels of max_pool2d, avg_pool2d and upsample_nearest2d, forward and backward.

Every kernel walks logical (n, c, h, w) indices and addresses memory through strides, so NCHW
and channels_last run the same code. The backward kernels gather (each input element sums the
outputs that reach it, in a fixed order): deterministic, no atomics. Tie / NaN rules are torch's:
the first maximum of a window wins, a NaN counts as the maximum (a later NaN wins over an earlier).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genkern import backends
from genkern.triton.activations import act_backward, act_forward

_INTERPRET = backends.triton_interpreter()
_BLOCK = 128 if _INTERPRET else 512


@triton.jit
def _split(i, C, H, W):
    w = i % W
    t = i // W
    h = t % H
    t = t // H
    return t // C, t % C, h, w


@triton.jit
def _max_pool_fwd_kernel(
    x_ptr,
    y_ptr,
    idx_ptr,
    preact_ptr,
    total,
    C,
    IH,
    IW,
    OH,
    OW,
    xs_n,
    xs_c,
    xs_h,
    xs_w,
    ys_n,
    ys_c,
    ys_h,
    ys_w,
    sH,
    sW,
    pH,
    pW,
    dH,
    dW,
    slope,
    KH: tl.constexpr,
    KW: tl.constexpr,
    ACT: tl.constexpr,
    SAVE_PREACT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < total
    n, c, oh, ow = _split(i, C, OH, OW)
    h0 = oh * sH - pH
    w0 = ow * sW - pW
    hs = tl.where(h0 < 0, h0 + ((dH - 1 - h0) // dH) * dH, h0)
    ws = tl.where(w0 < 0, w0 + ((dW - 1 - w0) // dW) * dW, w0)
    best = tl.full([BLOCK], float("-inf"), tl.float32)
    bi = tl.where((hs < IH) & (ws < IW), hs * IW + ws, -1)  # -1: a window all in the padding
    base = n * xs_n + c * xs_c
    for kh in tl.static_range(KH):
        ih = h0 + kh * dH
        for kw in tl.static_range(KW):
            iw = w0 + kw * dW
            valid = mask & (ih >= 0) & (ih < IH) & (iw >= 0) & (iw < IW)
            v = tl.load(x_ptr + base + ih * xs_h + iw * xs_w, mask=valid, other=float("-inf")).to(
                tl.float32
            )
            take = valid & ((v > best) | (v != v))
            best = tl.where(take, v, best)
            bi = tl.where(take, ih * IW + iw, bi)
    out = n * ys_n + c * ys_c + oh * ys_h + ow * ys_w
    # the pooled value rounded to the storage type first, as an activation applied after the pool
    pooled = best.to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + out, act_forward(pooled, ACT, slope).to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(idx_ptr + out, bi.to(tl.int64), mask=mask)
    if SAVE_PREACT:
        tl.store(preact_ptr + out, pooled, mask=mask)


@triton.jit
def _max_pool_bwd_kernel(
    gy_ptr,
    saved_ptr,
    idx_ptr,
    gx_ptr,
    total,
    C,
    IH,
    IW,
    OH,
    OW,
    gs_n,
    gs_c,
    gs_h,
    gs_w,
    xs_n,
    xs_c,
    xs_h,
    xs_w,
    sH,
    sW,
    pH,
    pW,
    dH,
    dW,
    slope,
    KH: tl.constexpr,
    KW: tl.constexpr,
    ACT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < total
    n, c, ih, iw = _split(i, C, IH, IW)
    me = ih * IW + iw
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for kh in tl.static_range(KH):
        th = ih + pH - kh * dH
        oh = th // sH
        ok_h = (th >= 0) & (th % sH == 0) & (oh < OH)
        for kw in tl.static_range(KW):
            tw = iw + pW - kw * dW
            ow = tw // sW
            valid = mask & ok_h & (tw >= 0) & (tw % sW == 0) & (ow < OW)
            off = n * gs_n + c * gs_c + oh * gs_h + ow * gs_w
            idx = tl.load(idx_ptr + off, mask=valid, other=-1)
            g = tl.load(gy_ptr + off, mask=valid, other=0.0)
            if ACT != 0:  # the activation's backward at the window's output
                g = act_backward(g, tl.load(saved_ptr + off, mask=valid, other=0.0), ACT, slope)
                g = g.to(gy_ptr.dtype.element_ty)  # rounded as the unfused backward stores it
            acc += tl.where(valid & (idx == me), g.to(tl.float32), 0.0)
    tl.store(
        gx_ptr + n * xs_n + c * xs_c + ih * xs_h + iw * xs_w,
        acc.to(gx_ptr.dtype.element_ty),
        mask=mask,
    )


@triton.jit
def _avg_divisor(
    oh,
    ow,
    IH,
    IW,
    sH,
    sW,
    pH,
    pW,
    KH: tl.constexpr,
    KW: tl.constexpr,
    COUNT_PAD: tl.constexpr,
    DIVISOR: tl.constexpr,
):
    """torch's window of output (oh, ow): clipped bounds and divisor."""
    h0 = oh * sH - pH
    w0 = ow * sW - pW
    h1 = tl.minimum(h0 + KH, IH + pH)
    w1 = tl.minimum(w0 + KW, IW + pW)
    pool = (h1 - h0) * (w1 - w0)
    h0c = tl.maximum(h0, 0)
    w0c = tl.maximum(w0, 0)
    h1c = tl.minimum(h1, IH)
    w1c = tl.minimum(w1, IW)
    if DIVISOR != 0:  # 0: none (torch refuses 0; a negative one divides)
        div = tl.zeros_like(pool) + DIVISOR
    elif COUNT_PAD:
        div = pool
    else:
        div = (h1c - h0c) * (w1c - w0c)
    return h0c, h1c, w0c, w1c, div


@triton.jit
def _avg_pool_fwd_kernel(
    x_ptr,
    y_ptr,
    total,
    C,
    IH,
    IW,
    OH,
    OW,
    xs_n,
    xs_c,
    xs_h,
    xs_w,
    ys_n,
    ys_c,
    ys_h,
    ys_w,
    sH,
    sW,
    pH,
    pW,
    KH: tl.constexpr,
    KW: tl.constexpr,
    COUNT_PAD: tl.constexpr,
    DIVISOR: tl.constexpr,
    BLOCK: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < total
    n, c, oh, ow = _split(i, C, OH, OW)
    h0c, h1c, w0c, w1c, div = _avg_divisor(
        oh, ow, IH, IW, sH, sW, pH, pW, KH, KW, COUNT_PAD, DIVISOR
    )
    h0 = oh * sH - pH
    w0 = ow * sW - pW
    base = n * xs_n + c * xs_c
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for kh in tl.static_range(KH):
        ih = h0 + kh
        for kw in tl.static_range(KW):
            iw = w0 + kw
            valid = mask & (ih >= h0c) & (ih < h1c) & (iw >= w0c) & (iw < w1c)
            acc += tl.load(x_ptr + base + ih * xs_h + iw * xs_w, mask=valid, other=0.0).to(
                tl.float32
            )
    empty = (h0c >= h1c) | (w0c >= w1c)
    y = tl.where(empty, 0.0, acc / tl.where(div == 0, 1, div).to(tl.float32))
    tl.store(
        y_ptr + n * ys_n + c * ys_c + oh * ys_h + ow * ys_w, y.to(y_ptr.dtype.element_ty), mask=mask
    )


@triton.jit
def _avg_pool_bwd_kernel(
    gy_ptr,
    gx_ptr,
    total,
    C,
    IH,
    IW,
    OH,
    OW,
    gs_n,
    gs_c,
    gs_h,
    gs_w,
    xs_n,
    xs_c,
    xs_h,
    xs_w,
    sH,
    sW,
    pH,
    pW,
    KH: tl.constexpr,
    KW: tl.constexpr,
    COUNT_PAD: tl.constexpr,
    DIVISOR: tl.constexpr,
    BLOCK: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < total
    n, c, ih, iw = _split(i, C, IH, IW)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for kh in tl.static_range(KH):
        th = ih + pH - kh
        oh = th // sH
        ok_h = (th >= 0) & (th % sH == 0) & (oh < OH)
        for kw in tl.static_range(KW):
            tw = iw + pW - kw
            ow = tw // sW
            valid = mask & ok_h & (tw >= 0) & (tw % sW == 0) & (ow < OW)
            _, _, _, _, div = _avg_divisor(
                oh, ow, IH, IW, sH, sW, pH, pW, KH, KW, COUNT_PAD, DIVISOR
            )
            g = tl.load(
                gy_ptr + n * gs_n + c * gs_c + oh * gs_h + ow * gs_w, mask=valid, other=0.0
            ).to(tl.float32)
            acc += tl.where(valid, g / tl.where(div == 0, 1, div).to(tl.float32), 0.0)
    tl.store(
        gx_ptr + n * xs_n + c * xs_c + ih * xs_h + iw * xs_w,
        acc.to(gx_ptr.dtype.element_ty),
        mask=mask,
    )


@triton.jit
def _up_fwd_kernel(
    x_ptr,
    y_ptr,
    sh_ptr,
    sw_ptr,
    total,
    C,
    OH,
    OW,
    xs_n,
    xs_c,
    xs_h,
    xs_w,
    ys_n,
    ys_c,
    ys_h,
    ys_w,
    BLOCK: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < total
    n, c, oh, ow = _split(i, C, OH, OW)
    ih = tl.load(sh_ptr + oh, mask=mask, other=0)
    iw = tl.load(sw_ptr + ow, mask=mask, other=0)
    v = tl.load(x_ptr + n * xs_n + c * xs_c + ih * xs_h + iw * xs_w, mask=mask, other=0.0)
    tl.store(y_ptr + n * ys_n + c * ys_c + oh * ys_h + ow * ys_w, v, mask=mask)


@triton.jit
def _up_bwd_kernel(
    gy_ptr,
    gx_ptr,
    h_lo_ptr,
    h_hi_ptr,
    w_lo_ptr,
    w_hi_ptr,
    total,
    C,
    IH,
    IW,
    gs_n,
    gs_c,
    gs_h,
    gs_w,
    xs_n,
    xs_c,
    xs_h,
    xs_w,
    MAXH: tl.constexpr,
    MAXW: tl.constexpr,
    BLOCK: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < total
    n, c, ih, iw = _split(i, C, IH, IW)
    h_lo = tl.load(h_lo_ptr + ih, mask=mask, other=0)
    h_hi = tl.load(h_hi_ptr + ih, mask=mask, other=0)
    w_lo = tl.load(w_lo_ptr + iw, mask=mask, other=0)
    w_hi = tl.load(w_hi_ptr + iw, mask=mask, other=0)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    base = n * gs_n + c * gs_c
    for a in range(MAXH):
        oh = h_lo + a
        for b in range(MAXW):
            ow = w_lo + b
            valid = mask & (oh < h_hi) & (ow < w_hi)
            acc += tl.load(gy_ptr + base + oh * gs_h + ow * gs_w, mask=valid, other=0.0).to(
                tl.float32
            )
    tl.store(
        gx_ptr + n * xs_n + c * xs_c + ih * xs_h + iw * xs_w,
        acc.to(gx_ptr.dtype.element_ty),
        mask=mask,
    )


def _grid(total):
    return (triton.cdiv(total, _BLOCK),)


def max_pool2d_forward_triton(
    x, kernel, stride, padding, dilation, ceil_mode, hw, act, slope, save_preact
):
    fmt = torch.channels_last if (x.dim() == 4 and not x.is_contiguous()) else None
    shape = [x.shape[0], x.shape[1], *hw]
    y = torch.empty(
        shape, dtype=x.dtype, device=x.device, memory_format=fmt or torch.contiguous_format
    )
    idx = torch.empty_like(y, dtype=torch.int64)
    preact = torch.empty_like(y) if save_preact else None
    total = y.numel()
    _max_pool_fwd_kernel[_grid(total)](
        x,
        y,
        idx,
        y if preact is None else preact,
        total,
        x.shape[1],
        x.shape[2],
        x.shape[3],
        hw[0],
        hw[1],
        *x.stride(),
        *y.stride(),
        *stride,
        *padding,
        *dilation,
        float(slope),
        KH=kernel[0],
        KW=kernel[1],
        ACT=act,
        SAVE_PREACT=save_preact,
        BLOCK=_BLOCK,
    )
    return y, idx, preact


def max_pool2d_backward_triton(
    grad_y, saved, indices, gx, kernel, stride, padding, dilation, act, slope
):
    """Writes every element of gx (its zeros are not needed)."""
    gy = grad_y.contiguous(memory_format=_fmt(gx))
    idx = indices.contiguous(memory_format=_fmt(gx))
    s = gy if act == 0 else saved.contiguous(memory_format=_fmt(gx))
    total = gx.numel()
    _max_pool_bwd_kernel[_grid(total)](
        gy,
        s,
        idx,
        gx,
        total,
        gx.shape[1],
        gx.shape[2],
        gx.shape[3],
        gy.shape[2],
        gy.shape[3],
        *gy.stride(),
        *gx.stride(),
        *stride,
        *padding,
        *dilation,
        float(slope),
        KH=kernel[0],
        KW=kernel[1],
        ACT=act,
        BLOCK=_BLOCK,
    )
    return gx


def _fmt(t):
    return torch.contiguous_format if t.is_contiguous() else torch.channels_last


def avg_pool2d_forward_triton(x, kernel, stride, padding, hw, ceil_mode, cip, div):
    y = torch.empty(
        [x.shape[0], x.shape[1], *hw], dtype=x.dtype, device=x.device, memory_format=_fmt(x)
    )
    total = y.numel()
    _avg_pool_fwd_kernel[_grid(total)](
        x,
        y,
        total,
        x.shape[1],
        x.shape[2],
        x.shape[3],
        hw[0],
        hw[1],
        *x.stride(),
        *y.stride(),
        *stride,
        *padding,
        KH=kernel[0],
        KW=kernel[1],
        COUNT_PAD=cip,
        DIVISOR=div,
        BLOCK=_BLOCK,
    )
    return y


def avg_pool2d_backward_triton(
    grad_y, input_size, cl, kernel, stride, padding, ceil_mode, cip, div
):
    fmt = torch.channels_last if cl else torch.contiguous_format
    gx = torch.empty(input_size, dtype=grad_y.dtype, device=grad_y.device, memory_format=fmt)
    gy = grad_y.contiguous(memory_format=_fmt(gx))
    total = gx.numel()
    _avg_pool_bwd_kernel[_grid(total)](
        gy,
        gx,
        total,
        gx.shape[1],
        gx.shape[2],
        gx.shape[3],
        gy.shape[2],
        gy.shape[3],
        *gy.stride(),
        *gx.stride(),
        *stride,
        *padding,
        KH=kernel[0],
        KW=kernel[1],
        COUNT_PAD=cip,
        DIVISOR=div,
        BLOCK=_BLOCK,
    )
    return gx


def _tables(in_hw, out_hw, scale_h, scale_w, device):
    from genkern.ops.pool import nearest_source_index

    return (
        nearest_source_index(out_hw[0], in_hw[0], scale_h, device),
        nearest_source_index(out_hw[1], in_hw[1], scale_w, device),
    )


def upsample_nearest2d_forward_triton(x, output_size, scale_h, scale_w):
    src_h, src_w = _tables(x.shape[2:], output_size, scale_h, scale_w, x.device)
    y = torch.empty(
        [x.shape[0], x.shape[1], src_h.numel(), src_w.numel()],
        dtype=x.dtype,
        device=x.device,
        memory_format=_fmt(x),
    )
    total = y.numel()
    _up_fwd_kernel[_grid(total)](
        x,
        y,
        src_h,
        src_w,
        total,
        x.shape[1],
        y.shape[2],
        y.shape[3],
        *x.stride(),
        *y.stride(),
        BLOCK=_BLOCK,
    )
    return y


def upsample_nearest2d_backward_triton(grad_y, input_size, cl, scale_h, scale_w):
    src_h, src_w = _tables(input_size[2:], grad_y.shape[2:], scale_h, scale_w, grad_y.device)
    fmt = torch.channels_last if cl else torch.contiguous_format
    gx = torch.empty(input_size, dtype=grad_y.dtype, device=grad_y.device, memory_format=fmt)
    gy = grad_y.contiguous(memory_format=_fmt(gx))
    ranges = []
    for src, size in ((src_h, gx.shape[2]), (src_w, gx.shape[3])):
        ar = torch.arange(size, device=src.device)
        lo = torch.searchsorted(src, ar)
        hi = torch.searchsorted(src, ar, right=True)
        ranges += [lo, hi, max(int((hi - lo).max().item()), 1)]
    h_lo, h_hi, maxh, w_lo, w_hi, maxw = ranges
    total = gx.numel()
    _up_bwd_kernel[_grid(total)](
        gy,
        gx,
        h_lo,
        h_hi,
        w_lo,
        w_hi,
        total,
        gx.shape[1],
        gx.shape[2],
        gx.shape[3],
        *gy.stride(),
        *gx.stride(),
        MAXH=maxh,
        MAXW=maxw,
        BLOCK=_BLOCK,
    )
    return gx
