"""Triton kernels of the fused conv2d + bias + activation op (forward and backward).

Design. Every kernel is an implicit GEMM: tiles of the GEMM operands are gathered straight from
the NCHW tensors through their strides (contiguous, channels_last or any strided view; nothing is
copied or im2col'ed), multiplied with tl.dot and accumulated in float32 registers. The GEMM
reduction index is flattened (kh, kw, c) with c fastest, so a K tile is one 1-D decomposition
plus two 1-D offset vectors, and every gathered address is `row_offset[:, None] +
col_offset[None, :]` (int64: tensors may pass 2^31 elements); padding and the tile edges are
masks. Small channel counts (RGB inputs) waste no K lanes. The grid is (M tiles, N tiles, group)
(wgrad: (M x N tiles, K split, group)).

  forward  M = N*OH*OW output pixels, N = OC/groups, K = (C/groups)*KH*KW. Epilogue in registers:
           + bias, store the pre-activation when asked, act, cast, store in y's layout.
  dgrad    M = N*H*W input pixels, N = C/groups, K = (OC/groups)*KH*KW, gather form: input pixel
           ih takes output row oh = (ih + pad - kh*dil) / stride where that divides exactly and is
           in range (the stride is a constexpr, so the division is by a constant).
  wgrad    M = OC/groups, N = (C/groups)*KH*KW, K = N*OH*OW; split over K into `split` programs
           writing float32 partials that torch sums in a fixed order when the output tiles alone
           would leave the GPU idle. The bias gradient is the row sum of the same A tiles, taken by
           the programs of the first column tile. Only bias asked: a small reduction kernel.
  The activation backward g = act'(z) * grad_y is a prologue of the dgrad/wgrad loads (grad_y and
  the saved tensor are loaded tile by tile and combined in registers); g is never materialized.

No atomics: every output element is written by exactly one program, so results are
deterministic. Tiles are autotuned on GPU (keys: the GEMM sizes; configs far larger than the GEMM
are pruned); under TRITON_INTERPRET=1 one small config is used. Half types feed tl.dot directly;
float32 uses TF32 or IEEE as torch.backends.cudnn.allow_tf32 says. The group axis of the grid is
CUDA grid dimension z (at most 65535 groups).
"""

from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl

from genkern import activations as A
from genkern import backends
from genkern.ops._checks import dense_format
from genkern.ops.conv2d import output_format, output_shape
from genkern.triton.activations import act_backward, act_forward

_INTERPRET = backends.triton_interpreter()
_INT32_LIMIT = 2**31 - 4096  # index vectors stay int32 below this (pid * BLOCK cannot overflow)


# ---- tile configurations --------------------------------------------------------------------


def _configs(tiles, interpret_tile):
    if _INTERPRET:
        bm, bn, bk = interpret_tile
        return [
            triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=4, num_stages=1)
        ]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
        for bm, bn, bk, w, s in tiles
    ]


# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages); the M side is the long one (pixels).
_PIXEL_GEMM_TILES = [
    (128, 128, 32, 8, 3),
    (128, 64, 32, 4, 4),
    (128, 64, 64, 8, 3),
    (64, 128, 32, 4, 4),
    (256, 64, 32, 8, 3),
    (64, 64, 32, 4, 4),
    (64, 64, 64, 4, 3),
    (128, 32, 32, 4, 4),
    (64, 32, 32, 4, 5),
    (128, 16, 32, 4, 4),
]
# wgrad: M = out channels, N = in channels * taps, K = pixels (long).
_WGRAD_TILES = [
    (128, 128, 32, 8, 3),
    (64, 128, 32, 4, 4),
    (128, 64, 32, 4, 4),
    (64, 64, 64, 4, 3),
    (64, 64, 32, 4, 4),
    (32, 64, 64, 4, 4),
    (64, 32, 64, 4, 4),
    (32, 32, 64, 4, 4),
    (128, 128, 64, 8, 3),
]


def _prune(m_name, n_name):
    """Drops configs whose M/N tiles are far larger than the GEMM (keeps at least one)."""

    def prune(configs, named_args, **kwargs):
        m = max(16, triton.next_power_of_2(int(named_args[m_name])))
        n = max(16, triton.next_power_of_2(int(named_args[n_name])))
        kept = [c for c in configs if c.kwargs["BLOCK_M"] <= 2 * m and c.kwargs["BLOCK_N"] <= n]
        if kept:
            return kept
        small = min(c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] for c in configs)
        return [c for c in configs if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] == small]

    return {"early_config_prune": prune}


# ---- kernels ------------------------------------------------------------------------------------


# Triton 3.9's interpreter mishandles bfloat16: tl.dot misreads bfloat16 operands and float32 ->
# bfloat16 casts truncate (GPUs round to nearest even). With BF16_INTERP (bfloat16 under the
# interpreter only; False on GPU, where these helpers reduce to a plain cast and tl.dot) the
# kernels round by hand and multiply the exactly-upcast operands, matching GPU numerics.


@triton.jit
def _round_bf16(x):
    """x (float32) rounded to the nearest bfloat16, ties to even, still as float32."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _cast(x, dtype: tl.constexpr, BF16_INTERP: tl.constexpr):
    """x (float32) cast to dtype with round-to-nearest-even."""
    if BF16_INTERP:
        if dtype == tl.bfloat16:
            x = _round_bf16(x)
    return x.to(dtype)


@triton.jit
def _mma(a, b, acc, DOT_PRECISION: tl.constexpr, BF16_INTERP: tl.constexpr):
    """acc + a @ b with float32 accumulation."""
    if BF16_INTERP:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    return acc


@triton.autotune(
    configs=_configs(_PIXEL_GEMM_TILES, (64, 16, 32)),
    key=["M", "OCG", "KG"],
    prune_configs_by=_prune("M", "OCG"),
)
@triton.jit
def _conv2d_act_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, z_ptr,
    M, OCG, KG, CG, H, W, OH, OW, KW,
    sxn, sxc, sxh, sxw,
    swo, swc, swh, sww,
    syn, syc, syh, syw,
    szn, szc, szh, szw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    slope,
    HAS_BIAS: tl.constexpr, SAVE_PREACT: tl.constexpr, ACT: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BF16_INTERP: tl.constexpr, INDEX_64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    g = tl.program_id(2)

    # rows: output pixels (n, oh, ow)
    if INDEX_64:
        offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    else:
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    nb = offs_m // (OH * OW)
    rem = offs_m % (OH * OW)
    oh = (rem // OW).to(tl.int32)
    ow = (rem % OW).to(tl.int32)
    ih0 = oh * stride_h - pad_h
    iw0 = ow * stride_w - pad_w
    x_row = (nb.to(tl.int64) * sxn + ih0.to(tl.int64) * sxh + iw0.to(tl.int64) * sxw
             + (g * CG).to(tl.int64) * sxc)  # fmt: skip

    # columns: output channels of group g
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < OCG
    oc = g * OCG + offs_n
    w_col = oc.to(tl.int64) * swo

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, KG, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)  # (kh, kw, c), c fastest
        k_mask = offs_k < KG
        c = offs_k % CG
        tap = offs_k // CG
        kh = tap // KW
        kw = tap % KW
        dh = kh * dil_h
        dw = kw * dil_w
        ih = ih0[:, None] + dh[None, :]
        iw = iw0[:, None] + dw[None, :]
        a_mask = (m_mask[:, None] & k_mask[None, :] & (ih >= 0) & (ih < H)
                  & (iw >= 0) & (iw < W))  # fmt: skip
        x_col = c.to(tl.int64) * sxc + dh.to(tl.int64) * sxh + dw.to(tl.int64) * sxw
        a = tl.load(x_ptr + (x_row[:, None] + x_col[None, :]), mask=a_mask, other=0.0)
        w_row = c.to(tl.int64) * swc + kh.to(tl.int64) * swh + kw.to(tl.int64) * sww
        b = tl.load(w_ptr + (w_row[:, None] + w_col[None, :]),
                    mask=k_mask[:, None] & n_mask[None, :], other=0.0)  # fmt: skip
        acc = _mma(a, b, acc, DOT_PRECISION, BF16_INTERP)

    # epilogue: bias, pre-activation, activation, all in registers
    if HAS_BIAS:
        bias = tl.load(b_ptr + oc, mask=n_mask, other=0.0).to(tl.float32)
        acc = acc + bias[None, :]
    out_mask = m_mask[:, None] & n_mask[None, :]
    oc64 = oc.to(tl.int64)
    if SAVE_PREACT:
        z_off = ((nb.to(tl.int64) * szn + oh.to(tl.int64) * szh + ow.to(tl.int64) * szw)[:, None]
                 + (oc64 * szc)[None, :])  # fmt: skip
        tl.store(z_ptr + z_off, _cast(acc, z_ptr.dtype.element_ty, BF16_INTERP), mask=out_mask)
    y = act_forward(acc, ACT, slope)
    y_off = ((nb.to(tl.int64) * syn + oh.to(tl.int64) * syh + ow.to(tl.int64) * syw)[:, None]
             + (oc64 * syc)[None, :])  # fmt: skip
    tl.store(y_ptr + y_off, _cast(y, y_ptr.dtype.element_ty, BF16_INTERP), mask=out_mask)


@triton.autotune(
    configs=_configs(_PIXEL_GEMM_TILES, (64, 16, 32)),
    key=["M", "CG", "KG"],
    prune_configs_by=_prune("M", "CG"),
)
@triton.jit
def _conv2d_act_dgrad_kernel(
    gy_ptr, s_ptr, w_ptr, gx_ptr,
    M, CG, KG, OCG, H, W, OH, OW, KW,
    sgn, sgc, sgh, sgw,
    ssn, ssc, ssh, ssw,
    swo, swc, swh, sww,
    sxn, sxc, sxh, sxw,
    pad_h, pad_w, dil_h, dil_w,
    slope,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, ACT: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BF16_INTERP: tl.constexpr, INDEX_64: tl.constexpr,
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
    gy_row = nb * sgn
    s_row = nb * ssn

    # columns: input channels of group g (weight dim 1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < CG
    w_col = offs_n.to(tl.int64) * swc

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, KG, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)  # (kh, kw, oc), oc fastest
        k_mask = offs_k < KG
        oc = g * OCG + offs_k % OCG
        tap = offs_k // OCG
        kh = tap // KW
        kw = tap % KW
        th = (ih + pad_h)[:, None] - (kh * dil_h)[None, :]
        tw = (iw + pad_w)[:, None] - (kw * dil_w)[None, :]
        if STRIDE_H == 1:
            oh = th
            valid = (th >= 0) & (th < OH)
        else:
            oh = th // STRIDE_H
            valid = (th >= 0) & (th % STRIDE_H == 0) & (oh < OH)
        if STRIDE_W == 1:
            ow = tw
            valid = valid & (tw >= 0) & (tw < OW)
        else:
            ow = tw // STRIDE_W
            valid = valid & (tw >= 0) & (tw % STRIDE_W == 0) & (ow < OW)
        a_mask = valid & m_mask[:, None] & k_mask[None, :]
        oc64 = oc.to(tl.int64)
        oh64 = oh.to(tl.int64)
        ow64 = ow.to(tl.int64)
        # prologue: g = act'(z) * grad_y, in registers
        gy_off = gy_row[:, None] + (oc64 * sgc)[None, :] + oh64 * sgh + ow64 * sgw
        gy = tl.load(gy_ptr + gy_off, mask=a_mask, other=0.0)
        if ACT == 0:
            a = gy
        else:
            s_off = s_row[:, None] + (oc64 * ssc)[None, :] + oh64 * ssh + ow64 * ssw
            s = tl.load(s_ptr + s_off, mask=a_mask, other=0.0)
            a = tl.where(a_mask, act_backward(gy, s, ACT, slope), 0.0)
        a = _cast(a.to(tl.float32), w_ptr.dtype.element_ty, BF16_INTERP)
        w_row = oc64 * swo + kh.to(tl.int64) * swh + kw.to(tl.int64) * sww
        b = tl.load(w_ptr + (w_row[:, None] + w_col[None, :]),
                    mask=k_mask[:, None] & n_mask[None, :], other=0.0)  # fmt: skip
        acc = _mma(a, b, acc, DOT_PRECISION, BF16_INTERP)

    gx_row = nb * sxn + ih.to(tl.int64) * sxh + iw.to(tl.int64) * sxw
    gx_col = (g * CG + offs_n).to(tl.int64) * sxc
    gx = _cast(acc, gx_ptr.dtype.element_ty, BF16_INTERP)
    tl.store(
        gx_ptr + (gx_row[:, None] + gx_col[None, :]), gx, mask=m_mask[:, None] & n_mask[None, :]
    )


@triton.autotune(
    configs=_configs(_WGRAD_TILES, (16, 64, 64)),
    key=["OCG", "NK", "P", "K_PER_SPLIT"],
    prune_configs_by=_prune("OCG", "NK"),
)
@triton.jit
def _conv2d_act_wgrad_kernel(
    gy_ptr, s_ptr, x_ptr, gw_ptr, gb_ptr,
    OCG, NK, P, K_PER_SPLIT, CG, H, W, OH, OW, KW,
    sgn, sgc, sgh, sgw,
    ssn, ssc, ssh, ssw,
    sxn, sxc, sxh, sxw,
    sws, swo, swc, swh, sww,
    sbs,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    slope,
    ACT: tl.constexpr, BIAS_GRAD: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BF16_INTERP: tl.constexpr, INDEX_64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    split = tl.program_id(1)
    g = tl.program_id(2)
    num_pid_m = tl.cdiv(OCG, BLOCK_M)
    pid_m = pid % num_pid_m
    pid_n = pid // num_pid_m

    # rows: output channels of group g
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < OCG
    oc = g * OCG + offs_m
    gy_col = oc.to(tl.int64) * sgc  # A = g^T: rows are channels, reduction is pixels
    s_col = oc.to(tl.int64) * ssc

    # columns: (kh, kw, c) of the weight, c fastest
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < NK
    c = offs_n % CG
    tap = offs_n // CG
    kh = tap // KW
    kw = tap % KW
    dh = kh * dil_h
    dw = kw * dil_w
    x_col = ((g * CG + c).to(tl.int64) * sxc + dh.to(tl.int64) * sxh
             + dw.to(tl.int64) * sxw)  # fmt: skip

    # this program's share of the reduction over pixels
    if INDEX_64:
        k_start = split.to(tl.int64) * K_PER_SPLIT
    else:
        k_start = split * K_PER_SPLIT
    k_len = tl.minimum(P - k_start, K_PER_SPLIT)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    bias_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for i in range(0, tl.cdiv(k_len, BLOCK_K)):
        offs_k = k_start + i * BLOCK_K + tl.arange(0, BLOCK_K)
        k_mask = offs_k < k_start + k_len
        nb = (offs_k // (OH * OW)).to(tl.int64)
        rem = offs_k % (OH * OW)
        oh = (rem // OW).to(tl.int32)
        ow = (rem % OW).to(tl.int32)
        # prologue: g = act'(z) * grad_y for this [channels, pixels] tile
        a_mask = m_mask[:, None] & k_mask[None, :]
        gy_row = nb * sgn + oh.to(tl.int64) * sgh + ow.to(tl.int64) * sgw
        gy = tl.load(gy_ptr + (gy_col[:, None] + gy_row[None, :]), mask=a_mask, other=0.0)
        if ACT == 0:
            gf = gy.to(tl.float32)
        else:
            s_row = nb * ssn + oh.to(tl.int64) * ssh + ow.to(tl.int64) * ssw
            s = tl.load(s_ptr + (s_col[:, None] + s_row[None, :]), mask=a_mask, other=0.0)
            gf = tl.where(a_mask, act_backward(gy, s, ACT, slope), 0.0)
        if BIAS_GRAD:
            bias_acc += tl.sum(gf, axis=1)
        a = _cast(gf, x_ptr.dtype.element_ty, BF16_INTERP)
        # B: the input patch values x[n, c, oh*s - p + kh*d, ow*s - p + kw*d]
        ih0 = oh * stride_h - pad_h
        iw0 = ow * stride_w - pad_w
        ih = ih0[:, None] + dh[None, :]
        iw = iw0[:, None] + dw[None, :]
        b_mask = (k_mask[:, None] & n_mask[None, :] & (ih >= 0) & (ih < H)
                  & (iw >= 0) & (iw < W))  # fmt: skip
        x_row = nb * sxn + ih0.to(tl.int64) * sxh + iw0.to(tl.int64) * sxw
        b = tl.load(x_ptr + (x_row[:, None] + x_col[None, :]), mask=b_mask, other=0.0)
        acc = _mma(a, b, acc, DOT_PRECISION, BF16_INTERP)

    split64 = split.to(tl.int64)
    gw_row = split64 * sws + oc.to(tl.int64) * swo
    gw_col = c.to(tl.int64) * swc + kh.to(tl.int64) * swh + kw.to(tl.int64) * sww
    gw = _cast(acc, gw_ptr.dtype.element_ty, BF16_INTERP)
    tl.store(
        gw_ptr + (gw_row[:, None] + gw_col[None, :]), gw, mask=m_mask[:, None] & n_mask[None, :]
    )
    if BIAS_GRAD:
        if pid_n == 0:  # the first column tile owns the bias gradient
            gb = _cast(bias_acc, gb_ptr.dtype.element_ty, BF16_INTERP)
            tl.store(gb_ptr + (split64 * sbs + oc), gb, mask=m_mask)


@triton.jit
def _conv2d_act_bgrad_kernel(
    gy_ptr, s_ptr, gb_ptr,
    OC, P, P_PER_SPLIT, OH, OW,
    sgn, sgc, sgh, sgw,
    ssn, ssc, ssh, ssw,
    sbs,
    slope,
    ACT: tl.constexpr, INDEX_64: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Bias gradient alone: one split's partial sum over pixels of g, per channel."""
    pid_c = tl.program_id(0)
    split = tl.program_id(1)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < OC
    gy_col = offs_c.to(tl.int64) * sgc
    s_col = offs_c.to(tl.int64) * ssc
    if INDEX_64:
        k_start = split.to(tl.int64) * P_PER_SPLIT
    else:
        k_start = split * P_PER_SPLIT
    k_len = tl.minimum(P - k_start, P_PER_SPLIT)
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for i in range(0, tl.cdiv(k_len, BLOCK_P)):
        offs_p = k_start + i * BLOCK_P + tl.arange(0, BLOCK_P)
        p_mask = offs_p < k_start + k_len
        nb = (offs_p // (OH * OW)).to(tl.int64)
        rem = offs_p % (OH * OW)
        oh = (rem // OW).to(tl.int64)
        ow = (rem % OW).to(tl.int64)
        mask = p_mask[:, None] & c_mask[None, :]
        gy_row = nb * sgn + oh * sgh + ow * sgw
        gy = tl.load(gy_ptr + (gy_row[:, None] + gy_col[None, :]), mask=mask, other=0.0)
        if ACT == 0:
            gf = gy.to(tl.float32)
        else:
            s_row = nb * ssn + oh * ssh + ow * ssw
            s = tl.load(s_ptr + (s_row[:, None] + s_col[None, :]), mask=mask, other=0.0)
            gf = tl.where(mask, act_backward(gy, s, ACT, slope), 0.0)
        acc += gf
    total = tl.sum(acc, axis=0)
    tl.store(gb_ptr + (split.to(tl.int64) * sbs + offs_c), total.to(gb_ptr.dtype.element_ty),
             mask=c_mask)  # fmt: skip


# ---- launchers --------------------------------------------------------------------------------


def _device_guard(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 follows torch.backends.cudnn.allow_tf32, like stock convolutions; half types use
    the tensor cores in any case."""
    if dtype == torch.float32 and not torch.backends.cudnn.allow_tf32:
        return "ieee"
    return "tf32"


def _bf16_interp(dtype: torch.dtype) -> bool:
    return _INTERPRET and dtype == torch.bfloat16


@functools.cache
def _num_sms(device_index) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


# Split-K of the weight gradient: aim for a few programs per SM, but give every split at least
# this many pixels (under the interpreter: small, so that the tests run the split path).
_SPLIT_MIN_PIXELS = 64 if _INTERPRET else 1024
_SPLIT_ROUND = 16 if _INTERPRET else 128
_SPLIT_MAX = 256


def _split(pixels: int, programs: int, device: torch.device) -> tuple[int, int]:
    """(number of splits, pixels per split) for a reduction over `pixels` on `programs` tiles."""
    target = 2 * (_num_sms(device.index) if device.type == "cuda" else 4)
    split = min(
        triton.cdiv(target, max(programs, 1)), triton.cdiv(pixels, _SPLIT_MIN_PIXELS), _SPLIT_MAX
    )
    split = max(split, 1)
    per = triton.cdiv(triton.cdiv(pixels, split), _SPLIT_ROUND) * _SPLIT_ROUND
    return triton.cdiv(pixels, per), per


def _index64(*sizes: int) -> bool:
    return max(sizes) >= _INT32_LIMIT


def conv2d_act_forward_triton(
    x, weight, bias, stride, padding, dilation, groups, act, slope, save_preact
):
    """(act(conv2d(x, weight) + bias), the pre-activation or None), in x's dtype."""
    bias = None if bias is None else bias.contiguous()  # the kernel reads b_ptr + channel
    n, _, h, w = x.shape
    oc, cg, kh, kw = weight.shape
    shape = output_shape(x, weight, stride, padding, dilation)
    oh, ow = shape[2], shape[3]
    fmt = output_format(x, weight)
    y = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    z = torch.empty_like(y) if save_preact else None
    ocg = oc // groups
    m, kg = n * oh * ow, cg * kh * kw
    if y.numel() == 0:
        return y, z
    zz = z if z is not None else y
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(ocg, meta["BLOCK_N"]),
                         groups)  # fmt: skip
    with _device_guard(x):
        _conv2d_act_fwd_kernel[grid](
            x, weight, bias if bias is not None else weight, y, zz,
            m, ocg, kg, cg, h, w, oh, ow, kw,
            *x.stride(), *weight.stride(), *y.stride(), *zz.stride(),
            stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
            float(slope),
            HAS_BIAS=bias is not None, SAVE_PREACT=z is not None, ACT=int(act),
            DOT_PRECISION=_dot_precision(x.dtype), BF16_INTERP=_bf16_interp(x.dtype),
            INDEX_64=_index64(m),
        )  # fmt: skip
    return y, z


def conv2d_act_backward_triton(
    grad_y, saved, x, weight, stride, padding, dilation, groups, act, slope, output_mask
):
    """(grad_x, grad_weight, grad_bias), each None where output_mask says it is not needed."""
    need_x, need_w, need_b = (bool(v) for v in output_mask)
    act = int(act)
    if act != A.IDENTITY and (saved is None or saved.shape != grad_y.shape):
        raise RuntimeError(
            "conv2d backward (triton): the activation's saved tensor is missing or has the wrong "
            f"shape ({None if saved is None else list(saved.shape)} vs {list(grad_y.shape)})"
        )
    s = saved if act != A.IDENTITY else grad_y
    oc, cg, kh, kw = weight.shape
    oh, ow = grad_y.shape[2], grad_y.shape[3]
    ocg = oc // groups
    precision = _dot_precision(x.dtype)
    slope = float(slope)
    gx = gw = gb = None
    with _device_guard(x):
        if need_x:
            gx = torch.empty(x.shape, dtype=x.dtype, device=x.device,
                             memory_format=dense_format(x))  # fmt: skip
            if gx.numel():
                _dgrad(grad_y, s, weight, gx, stride, padding, dilation, groups, act, slope,
                       precision, ocg, cg, kh, kw, oh, ow)  # fmt: skip
        if need_w:
            gw = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device,
                             memory_format=dense_format(weight))  # fmt: skip
        if need_w and gw.numel():
            gb = _wgrad(grad_y, s, x, gw, need_b, stride, padding, dilation, groups, act, slope,
                        precision, ocg, cg, kh, kw, oh, ow)  # fmt: skip
        elif need_b:
            gb = _bgrad(grad_y, s, act, slope, weight.dtype)
    return gx, gw, gb


def _dgrad(grad_y, s, weight, gx, stride, padding, dilation, groups, act, slope, precision,
           ocg, cg, kh, kw, oh, ow):  # fmt: skip
    n, _, h, w = gx.shape
    m, kg = n * h * w, ocg * kh * kw
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(cg, meta["BLOCK_N"]),
                         groups)  # fmt: skip
    if kg == 0:
        gx.zero_()
        return
    _conv2d_act_dgrad_kernel[grid](
        grad_y, s, weight, gx,
        m, cg, kg, ocg, h, w, oh, ow, kw,
        *grad_y.stride(), *s.stride(), *weight.stride(), *gx.stride(),
        padding[0], padding[1], dilation[0], dilation[1],
        slope,
        STRIDE_H=int(stride[0]), STRIDE_W=int(stride[1]), ACT=act, DOT_PRECISION=precision,
        BF16_INTERP=_bf16_interp(gx.dtype), INDEX_64=_index64(m),
    )  # fmt: skip


def _wgrad(grad_y, s, x, gw, need_b, stride, padding, dilation, groups, act, slope, precision,
           ocg, cg, kh, kw, oh, ow):  # fmt: skip
    """Writes the weight gradient into gw; returns the bias gradient (or None)."""
    n, _, h, w = x.shape
    oc = gw.shape[0]
    nk, p = cg * kh * kw, n * oh * ow
    tiles = groups * triton.cdiv(ocg, 64) * triton.cdiv(nk, 64)
    split, per = _split(p, tiles, x.device)
    if split == 1:
        gw_out = gw
        gb_out = torch.empty(oc, dtype=gw.dtype, device=gw.device) if need_b else None
        sws, sbs = 0, 0
    else:
        gw_out = torch.empty((split, *gw.shape), dtype=torch.float32, device=gw.device)
        gw_out = gw_out.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)  # (kh,kw,c)
        gb_out = torch.empty((split, oc), dtype=torch.float32, device=gw.device) if need_b else None
        sws, sbs = gw_out.stride(0), (gb_out.stride(0) if need_b else 0)
    gw_strides = gw_out.stride()[-4:]
    grid = lambda meta: (triton.cdiv(ocg, meta["BLOCK_M"]) * triton.cdiv(nk, meta["BLOCK_N"]),
                         split, groups)  # fmt: skip
    _conv2d_act_wgrad_kernel[grid](
        grad_y, s, x, gw_out, gb_out if need_b else gw_out,
        ocg, nk, p, per, cg, h, w, oh, ow, kw,
        *grad_y.stride(), *s.stride(), *x.stride(),
        sws, *gw_strides,
        sbs,
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        slope,
        ACT=act, BIAS_GRAD=need_b, DOT_PRECISION=precision, BF16_INTERP=_bf16_interp(x.dtype),
        INDEX_64=_index64(p),
    )  # fmt: skip
    if split > 1:  # a fixed-order reduction of the partials: deterministic
        gw.copy_(gw_out.sum(0))
        if need_b:
            gb_out = gb_out.sum(0).to(gw.dtype)
    return gb_out


def _bgrad(grad_y, s, act, slope, dtype):
    """sum over (N, OH, OW) of act_backward(grad_y, s) per channel, without the weight GEMM."""
    n, oc, oh, ow = grad_y.shape
    if oc == 0:
        return grad_y.new_zeros(0, dtype=dtype)
    p = n * oh * ow
    block_c = 16 if _INTERPRET else 64
    block_p = 32 if _INTERPRET else 64
    split, per = _split(p, triton.cdiv(oc, block_c), grad_y.device)
    out = torch.empty((split, oc), dtype=torch.float32, device=grad_y.device)
    _conv2d_act_bgrad_kernel[(triton.cdiv(oc, block_c), split)](
        grad_y, s, out,
        oc, p, per, oh, ow,
        *grad_y.stride(), *s.stride(),
        out.stride(0),
        slope,
        ACT=act, INDEX_64=_index64(p), BLOCK_P=block_p, BLOCK_C=block_c,
        num_warps=4,
    )  # fmt: skip
    return out.sum(0).to(dtype)
