"""Triton kernels of the fused conv_transpose2d + bias + activation op (forward and backward).

Same approach as genkern/triton/conv2d.py (implicit GEMMs gathered through strides, float32
accumulators, int64 addresses, masks for padding and tile edges, no atomics), for
y[n, oc, oh, ow] = sum over (ci, kh, kw) with oh = ih*s - p + kh*d, ow = iw*s - p + kw*d of
x[n, ci, ih, iw] * w[ci, oc, kh, kw].

  forward  Computed directly in gather form, without a zero-inserted input or a col2im buffer:
           output pixels are split into the s_h * s_w phases (oh mod s_h, ow mod s_w), and within
           a phase the taps that reach a pixel are the same for every pixel: kh = kh0 + j*step
           (step = s / gcd(s, d)) with ih = oh // s + base - j*(step*d / s), an affine gather
           with no division and no masked-off taps. A 4x4 stride-2 kernel (DCGAN) is 4 dense
           GEMMs of K = C_in * 2 * 2 instead of one GEMM with 3/4 of its K lanes masked. Grid:
           (M tiles of one phase, N tiles, group x phase); M = N*ceil(OH/s_h)*ceil(OW/s_w),
           N = OC/groups, K = (C_in/groups)*taps of the phase, (jh, jw, c) with c fastest.
           Epilogue in registers: + bias, store the pre-activation when asked, act, store.
  dgrad    The gradient of a transposed conv with respect to its input is a regular conv of g:
           gx[n, ci, ih, iw] = sum g[n, oc, ih*s - p + kh*d, iw*s - p + kw*d] * w[ci, oc, kh, kw];
           M = N*H*W input pixels, N = C_in/groups, K = (OC/groups)*KH*KW (kh, kw, oc).
  wgrad    gw[ci, oc, kh, kw] = sum over input pixels of x[n, ci, ih, iw] * g[n, oc, oh, ow]:
           M = C_in/groups, N = (OC/groups)*KH*KW (kh, kw, oc), K = N*H*W input pixels (every
           input pixel meets every tap: no divisibility masks), split over K into float32 partials
           summed in a fixed order when the output tiles alone would leave the GPU idle.
  bias     sum of g over (N, OH, OW) per channel: conv2d's reduction kernel.
  The activation backward g = act'(z) * grad_y is a prologue of the dgrad and wgrad loads of
  grad_y (with the saved tensor, in registers); g is never materialized.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from genkern import activations as A
from genkern.ops._checks import dense_format
from genkern.ops.conv2d import output_format
from genkern.ops.conv_transpose2d import output_shape
from genkern.triton.activations import act_backward, act_forward
from genkern.triton.conv2d import (
    _PIXEL_GEMM_TILES,
    _WGRAD_TILES,
    _bgrad,
    _configs,
    _device_guard,
    _dot_precision,
    _index64,
    _prune,
    _split,
)
from genkern.triton.linear import interp_bf16_in_float32

# ---- kernels ------------------------------------------------------------------------------------


@triton.autotune(
    configs=_configs(_PIXEL_GEMM_TILES, (32, 16, 16)),
    key=["M", "OCG", "CG", "STRIDE_H", "STRIDE_W"],
    prune_configs_by=_prune("M", "OCG"),
)
@triton.jit
def _conv_transpose2d_act_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, z_ptr, tap_h_ptr, tap_w_ptr,
    M, OCG, CG, H, W, OH, OW, OHQ, OWQ,
    sxn, sxc, sxh, sxw,
    swi, swo, swh, sww,
    syn, syc, syh, syw,
    szn, szc, szh, szw,
    step_h, step_w, dstep_h, dstep_w,
    slope,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
    HAS_BIAS: tl.constexpr, SAVE_PREACT: tl.constexpr, ACT: tl.constexpr,
    DOT_PRECISION: tl.constexpr, INDEX_64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_z = tl.program_id(2)
    g = pid_z // (STRIDE_H * STRIDE_W)
    phase = pid_z % (STRIDE_H * STRIDE_W)
    rh = phase // STRIDE_W
    rw = phase % STRIDE_W
    # this phase's taps: kh = kh0 + j*step_h for j < nkh, reaching ih = oh // s + base_h - j*dstep_h
    kh0 = tl.load(tap_h_ptr + 3 * rh)
    nkh = tl.load(tap_h_ptr + 3 * rh + 1)
    base_h = tl.load(tap_h_ptr + 3 * rh + 2)
    kw0 = tl.load(tap_w_ptr + 3 * rw)
    nkw = tl.load(tap_w_ptr + 3 * rw + 1)
    base_w = tl.load(tap_w_ptr + 3 * rw + 2)

    # rows: output pixels (n, oh, ow) of this phase
    if INDEX_64:
        offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    else:
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    nb = offs_m // (OHQ * OWQ)
    rem = offs_m % (OHQ * OWQ)
    oq = (rem // OWQ).to(tl.int32)
    pq = (rem % OWQ).to(tl.int32)
    oh = rh + oq * STRIDE_H
    ow = rw + pq * STRIDE_W
    m_mask = (offs_m < M) & (oh < OH) & (ow < OW)
    ih0 = oq + base_h
    iw0 = pq + base_w
    x_row = (nb.to(tl.int64) * sxn + ih0.to(tl.int64) * sxh + iw0.to(tl.int64) * sxw
             + (g * CG).to(tl.int64) * sxc)  # fmt: skip

    # columns: output channels of group g (weight dim 1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < OCG
    w_col = offs_n.to(tl.int64) * swo

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_phase = nkh * nkw * CG
    for k0 in range(0, k_phase, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)  # (jh, jw, c), c fastest
        k_mask = offs_k < k_phase
        c = offs_k % CG
        tap = offs_k // CG
        jh = tap // nkw
        jw = tap % nkw
        dh = jh * dstep_h
        dw = jw * dstep_w
        ih = ih0[:, None] - dh[None, :]
        iw = iw0[:, None] - dw[None, :]
        a_mask = (m_mask[:, None] & k_mask[None, :] & (ih >= 0) & (ih < H)
                  & (iw >= 0) & (iw < W))  # fmt: skip
        x_col = c.to(tl.int64) * sxc - dh.to(tl.int64) * sxh - dw.to(tl.int64) * sxw
        a = tl.load(x_ptr + (x_row[:, None] + x_col[None, :]), mask=a_mask, other=0.0)
        kh = kh0 + jh * step_h
        kw = kw0 + jw * step_w
        w_row = ((g * CG + c).to(tl.int64) * swi + kh.to(tl.int64) * swh
                 + kw.to(tl.int64) * sww)  # fmt: skip
        b = tl.load(w_ptr + (w_row[:, None] + w_col[None, :]),
                    mask=k_mask[:, None] & n_mask[None, :], other=0.0)  # fmt: skip
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)

    # epilogue: bias, pre-activation, activation, all in registers
    oc = g * OCG + offs_n
    if HAS_BIAS:
        bias = tl.load(b_ptr + oc, mask=n_mask, other=0.0).to(tl.float32)
        acc = acc + bias[None, :]
    out_mask = m_mask[:, None] & n_mask[None, :]
    oc64 = oc.to(tl.int64)
    nb64 = nb.to(tl.int64)
    if SAVE_PREACT:
        z_off = ((nb64 * szn + oh.to(tl.int64) * szh + ow.to(tl.int64) * szw)[:, None]
                 + (oc64 * szc)[None, :])  # fmt: skip
        tl.store(z_ptr + z_off, acc.to(z_ptr.dtype.element_ty), mask=out_mask)
    y = act_forward(acc, ACT, slope)
    y_off = ((nb64 * syn + oh.to(tl.int64) * syh + ow.to(tl.int64) * syw)[:, None]
             + (oc64 * syc)[None, :])  # fmt: skip
    tl.store(y_ptr + y_off, y.to(y_ptr.dtype.element_ty), mask=out_mask)


@triton.autotune(
    configs=_configs(_PIXEL_GEMM_TILES, (32, 16, 16)),
    key=["M", "CG", "KG"],
    prune_configs_by=_prune("M", "CG"),
)
@triton.jit
def _conv_transpose2d_act_dgrad_kernel(
    gy_ptr, s_ptr, w_ptr, gx_ptr,
    M, CG, KG, OCG, H, W, OH, OW, KW,
    sgn, sgc, sgh, sgw,
    ssn, ssc, ssh, ssw,
    swi, swo, swh, sww,
    sxn, sxc, sxh, sxw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    slope,
    ACT: tl.constexpr, DOT_PRECISION: tl.constexpr, INDEX_64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    g = tl.program_id(2)

    # rows: input pixels (n, ih, iw)
    if INDEX_64:
        offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    else:
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    nb = (offs_m // (H * W)).to(tl.int64)
    rem = offs_m % (H * W)
    ih = (rem // W).to(tl.int32)
    iw = (rem % W).to(tl.int32)
    oh0 = ih * stride_h - pad_h
    ow0 = iw * stride_w - pad_w
    gy_row = nb * sgn + oh0.to(tl.int64) * sgh + ow0.to(tl.int64) * sgw
    s_row = nb * ssn + oh0.to(tl.int64) * ssh + ow0.to(tl.int64) * ssw

    # columns: input channels of group g (weight dim 0)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < CG
    w_col = (g * CG + offs_n).to(tl.int64) * swi

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, KG, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)  # (kh, kw, oc), oc fastest
        k_mask = offs_k < KG
        ocl = offs_k % OCG
        tap = offs_k // OCG
        kh = tap // KW
        kw = tap % KW
        dh = kh * dil_h
        dw = kw * dil_w
        oh = oh0[:, None] + dh[None, :]
        ow = ow0[:, None] + dw[None, :]
        a_mask = (m_mask[:, None] & k_mask[None, :] & (oh >= 0) & (oh < OH)
                  & (ow >= 0) & (ow < OW))  # fmt: skip
        oc64 = (g * OCG + ocl).to(tl.int64)
        # prologue: g = act'(z) * grad_y, in registers
        gy_col = oc64 * sgc + dh.to(tl.int64) * sgh + dw.to(tl.int64) * sgw
        gy = tl.load(gy_ptr + (gy_row[:, None] + gy_col[None, :]), mask=a_mask, other=0.0)
        if ACT == 0:
            a = gy
        else:
            s_col = oc64 * ssc + dh.to(tl.int64) * ssh + dw.to(tl.int64) * ssw
            s = tl.load(s_ptr + (s_row[:, None] + s_col[None, :]), mask=a_mask, other=0.0)
            a = tl.where(a_mask, act_backward(gy, s, ACT, slope), 0.0)
        a = a.to(w_ptr.dtype.element_ty)
        w_row = ocl.to(tl.int64) * swo + kh.to(tl.int64) * swh + kw.to(tl.int64) * sww
        b = tl.load(w_ptr + (w_row[:, None] + w_col[None, :]),
                    mask=k_mask[:, None] & n_mask[None, :], other=0.0)  # fmt: skip
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)

    gx_row = nb * sxn + ih.to(tl.int64) * sxh + iw.to(tl.int64) * sxw
    gx_col = (g * CG + offs_n).to(tl.int64) * sxc
    tl.store(gx_ptr + (gx_row[:, None] + gx_col[None, :]), acc.to(gx_ptr.dtype.element_ty),
             mask=m_mask[:, None] & n_mask[None, :])  # fmt: skip


@triton.autotune(
    configs=_configs(_WGRAD_TILES, (16, 32, 32)),
    key=["CG", "NK", "P", "K_PER_SPLIT"],
    prune_configs_by=_prune("CG", "NK"),
)
@triton.jit
def _conv_transpose2d_act_wgrad_kernel(
    gy_ptr, s_ptr, x_ptr, gw_ptr,
    CG, NK, P, K_PER_SPLIT, OCG, H, W, OH, OW, KW,
    sgn, sgc, sgh, sgw,
    ssn, ssc, ssh, ssw,
    sxn, sxc, sxh, sxw,
    sws, swi, swo, swh, sww,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    slope,
    ACT: tl.constexpr, DOT_PRECISION: tl.constexpr, INDEX_64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    split = tl.program_id(1)
    g = tl.program_id(2)
    num_pid_m = tl.cdiv(CG, BLOCK_M)
    pid_m = pid % num_pid_m
    pid_n = pid // num_pid_m

    # rows: input channels of group g (A = x^T: rows are channels, the reduction is pixels)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < CG
    ci = g * CG + offs_m
    x_col = ci.to(tl.int64) * sxc

    # columns: (kh, kw, oc) of the weight, oc fastest
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < NK
    ocl = offs_n % OCG
    tap = offs_n // OCG
    kh = tap // KW
    kw = tap % KW
    dh = kh * dil_h
    dw = kw * dil_w
    oc64 = (g * OCG + ocl).to(tl.int64)
    gy_col = oc64 * sgc + dh.to(tl.int64) * sgh + dw.to(tl.int64) * sgw
    s_col = oc64 * ssc + dh.to(tl.int64) * ssh + dw.to(tl.int64) * ssw

    # this program's share of the reduction over input pixels
    if INDEX_64:
        k_start = split.to(tl.int64) * K_PER_SPLIT
    else:
        k_start = split * K_PER_SPLIT
    k_len = tl.minimum(P - k_start, K_PER_SPLIT)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for i in range(0, tl.cdiv(k_len, BLOCK_K)):
        offs_k = k_start + i * BLOCK_K + tl.arange(0, BLOCK_K)
        k_mask = offs_k < k_start + k_len
        nb = (offs_k // (H * W)).to(tl.int64)
        rem = offs_k % (H * W)
        ih = (rem // W).to(tl.int32)
        iw = (rem % W).to(tl.int32)
        x_row = nb * sxn + ih.to(tl.int64) * sxh + iw.to(tl.int64) * sxw
        a = tl.load(x_ptr + (x_col[:, None] + x_row[None, :]),
                    mask=m_mask[:, None] & k_mask[None, :], other=0.0)  # fmt: skip
        # B: g at the output pixel each (input pixel, tap) reaches, act backward in registers
        oh0 = ih * stride_h - pad_h
        ow0 = iw * stride_w - pad_w
        oh = oh0[:, None] + dh[None, :]
        ow = ow0[:, None] + dw[None, :]
        b_mask = (k_mask[:, None] & n_mask[None, :] & (oh >= 0) & (oh < OH)
                  & (ow >= 0) & (ow < OW))  # fmt: skip
        gy_row = nb * sgn + oh0.to(tl.int64) * sgh + ow0.to(tl.int64) * sgw
        gy = tl.load(gy_ptr + (gy_row[:, None] + gy_col[None, :]), mask=b_mask, other=0.0)
        if ACT == 0:
            b = gy
        else:
            s_row = nb * ssn + oh0.to(tl.int64) * ssh + ow0.to(tl.int64) * ssw
            s = tl.load(s_ptr + (s_row[:, None] + s_col[None, :]), mask=b_mask, other=0.0)
            b = tl.where(b_mask, act_backward(gy, s, ACT, slope), 0.0)
        b = b.to(x_ptr.dtype.element_ty)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)

    gw_row = split.to(tl.int64) * sws + ci.to(tl.int64) * swi
    gw_col = ocl.to(tl.int64) * swo + kh.to(tl.int64) * swh + kw.to(tl.int64) * sww
    tl.store(gw_ptr + (gw_row[:, None] + gw_col[None, :]), acc.to(gw_ptr.dtype.element_ty),
             mask=m_mask[:, None] & n_mask[None, :])  # fmt: skip


# ---- launchers --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _tap_table(stride, padding, dilation, kernel, device: torch.device) -> torch.Tensor:
    """The per-phase tap tables of both dims on `device`, [h phases..., w phases...] (int32),
    cached: no host-to-device copy per call (and none inside a CUDA graph capture after the
    first call)."""
    table = [v for i in range(2) for v in _phase_taps(stride[i], padding[i], dilation[i],
                                                       kernel[i])]  # fmt: skip
    return torch.tensor(table, dtype=torch.int32).to(device)


def _phase_taps(stride: int, padding: int, dilation: int, kernel: int) -> list[int]:
    """Per output phase r in [0, stride): (first tap, number of taps, input offset), flattened.

    Output row oh = r + stride*q takes the taps k with (oh + padding - k*dilation) divisible by
    stride: k = k0, k0 + step, ... (step = stride / gcd(stride, dilation)), at input row
    ih = q + base - j*(step*dilation/stride) for the j-th of them.
    """
    step = stride // math.gcd(stride, dilation)
    table = []
    for r in range(stride):
        k0 = next((k for k in range(min(step, kernel)) if (r + padding - k * dilation) % stride
                   == 0), None)  # fmt: skip
        if k0 is None:
            table += [0, 0, 0]
        else:
            table += [k0, (kernel - k0 + step - 1) // step, (r + padding - k0 * dilation) // stride]
    return table


@interp_bf16_in_float32
def conv_transpose2d_act_forward_triton(x, weight, bias, stride, padding, output_padding, dilation,
                                        groups, act, slope, save_preact):  # fmt: skip
    """(act(conv_transpose2d(x, weight) + bias), the pre-activation or None), in x's dtype."""
    bias = None if bias is None else bias.contiguous()  # the kernel reads b_ptr + channel
    n, c, h, w = x.shape
    _, ocg, kh, kw = weight.shape
    shape = output_shape(x, weight, stride, padding, output_padding, dilation, groups)
    oh, ow = shape[2], shape[3]
    fmt = output_format(x, weight)
    y = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    z = torch.empty_like(y) if save_preact else None
    if y.numel() == 0:
        return y, z
    sh, sw = int(stride[0]), int(stride[1])
    taps = _tap_table((sh, sw), tuple(padding), tuple(dilation), (kh, kw), x.device)
    step_h, step_w = (s // math.gcd(s, d) for s, d in zip((sh, sw), dilation))
    ohq, owq = triton.cdiv(oh, sh), triton.cdiv(ow, sw)
    m, cg = n * ohq * owq, c // groups
    zz = z if z is not None else y
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(ocg, meta["BLOCK_N"]),
                         groups * sh * sw)  # fmt: skip
    with _device_guard(x):
        _conv_transpose2d_act_fwd_kernel[grid](
            x, weight, bias if bias is not None else weight, y, zz, taps, taps[3 * sh:],
            m, ocg, cg, h, w, oh, ow, ohq, owq,
            *x.stride(), *weight.stride(), *y.stride(), *zz.stride(),
            step_h, step_w, step_h * dilation[0] // sh, step_w * dilation[1] // sw,
            float(slope),
            STRIDE_H=sh, STRIDE_W=sw, HAS_BIAS=bias is not None, SAVE_PREACT=z is not None,
            ACT=int(act), DOT_PRECISION=_dot_precision(x.dtype), INDEX_64=_index64(m),
        )  # fmt: skip
    return y, z


@interp_bf16_in_float32
def conv_transpose2d_act_backward_triton(grad_y, saved, x, weight, stride, padding,
                                         output_padding, dilation, groups, act, slope,
                                         output_mask):  # fmt: skip
    """(grad_x, grad_weight, grad_bias), each None where output_mask says it is not needed."""
    need_x, need_w, need_b = (bool(v) for v in output_mask)
    act = int(act)
    if act != A.IDENTITY and (saved is None or saved.shape != grad_y.shape):
        raise RuntimeError(
            "conv_transpose2d backward (triton): the activation's saved tensor is missing or has "
            f"the wrong shape ({None if saved is None else list(saved.shape)} vs "
            f"{list(grad_y.shape)})"
        )
    s = saved if act != A.IDENTITY else grad_y
    n, c, h, w = x.shape
    _, ocg, kh, kw = weight.shape
    oh, ow = grad_y.shape[2], grad_y.shape[3]
    cg = c // groups
    precision = _dot_precision(x.dtype)
    slope = float(slope)
    gx = gw = gb = None
    with _device_guard(x):
        if need_x:
            gx = torch.empty(x.shape, dtype=x.dtype, device=x.device,
                             memory_format=dense_format(x))  # fmt: skip
            kg = ocg * kh * kw
            if gx.numel() and kg == 0:
                gx.zero_()
            elif gx.numel():
                m = n * h * w
                grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]),
                                     triton.cdiv(cg, meta["BLOCK_N"]), groups)  # fmt: skip
                _conv_transpose2d_act_dgrad_kernel[grid](
                    grad_y, s, weight, gx,
                    m, cg, kg, ocg, h, w, oh, ow, kw,
                    *grad_y.stride(), *s.stride(), *weight.stride(), *gx.stride(),
                    stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
                    slope,
                    ACT=act, DOT_PRECISION=precision, INDEX_64=_index64(m),
                )  # fmt: skip
        if need_w:
            gw = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device,
                             memory_format=dense_format(weight))  # fmt: skip
            if gw.numel():
                _wgrad(grad_y, s, x, gw, stride, padding, dilation, groups, act, slope, precision)
        if need_b:
            gb = _bgrad(grad_y, s, act, slope, weight.dtype)
    return gx, gw, gb


def _wgrad(grad_y, s, x, gw, stride, padding, dilation, groups, act, slope, precision):
    n, c, h, w = x.shape
    _, ocg, kh, kw = gw.shape
    oh, ow = grad_y.shape[2], grad_y.shape[3]
    cg, nk, p = c // groups, ocg * kh * kw, n * h * w
    tiles = groups * triton.cdiv(cg, 64) * triton.cdiv(nk, 64)
    split, per = _split(p, tiles, x.device)
    if split == 1:
        gw_out, sws = gw, 0
    else:
        gw_out = torch.empty((split, *gw.shape), dtype=torch.float32, device=gw.device)
        gw_out = gw_out.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)  # oc fastest
        sws = gw_out.stride(0)
    grid = lambda meta: (triton.cdiv(cg, meta["BLOCK_M"]) * triton.cdiv(nk, meta["BLOCK_N"]),
                         split, groups)  # fmt: skip
    _conv_transpose2d_act_wgrad_kernel[grid](
        grad_y, s, x, gw_out,
        cg, nk, p, per, ocg, h, w, oh, ow, kw,
        *grad_y.stride(), *s.stride(), *x.stride(),
        sws, *gw_out.stride()[-4:],
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        slope,
        ACT=act, DOT_PRECISION=precision, INDEX_64=_index64(p),
    )  # fmt: skip
    if split > 1:  # a fixed-order reduction of the partials: deterministic
        gw.copy_(gw_out.sum(0))
