"""Triton kernels of the fused linear + bias + activation op (forward and backward).

  forward  y[M, N] = act(x[M, K] @ w[N, K]^T + bias): a tiled tl.dot GEMM (program ids grouped
           along M so consecutive programs share weight tiles in L2), float32 accumulators, the
           epilogue (+ bias, store the pre-activation when asked, act, cast, store) in registers.
  backward Both gradients are one kernel, C[R, Q] = sum_t g'[r, t] * B[t, q], where g' is g or
           g^T read through its strides and g = act'(z) * grad_y is computed as the prologue of
           the A loads (never materialized):
             dgrad  gx[M, K] = g[M, N] @ w[N, K]
             wgrad  gw[N, K] = g^T[N, M] @ x[M, K], split over M into float32 partials summed in
                    a fixed order when the output tiles alone would leave the GPU idle; the bias
                    gradient is the row sum of the same A tiles, taken by the first column tile.
           Only the bias asked: conv2d's reduction kernel on g viewed as [M, N, 1, 1].
Any strides (transposed or sliced x and w are read in place); addresses in int64; no atomics.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genkern import activations as A
from genkern.triton.activations import act_backward, act_forward
from genkern.triton.conv2d import _bgrad, _configs, _device_guard, _prune, _split

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)
_GEMM_TILES = [
    (128, 128, 32, 8, 3),
    (128, 64, 32, 4, 4),
    (64, 128, 32, 4, 4),
    (128, 128, 64, 8, 3),
    (64, 64, 64, 4, 3),
    (64, 64, 32, 4, 4),
    (32, 64, 64, 4, 4),
    (64, 32, 64, 4, 4),
    (32, 32, 64, 4, 4),
    (16, 64, 64, 4, 4),
]


def interp_bf16_in_float32(fn):
    """Under the interpreter, bfloat16 tl.dot gives garbage (numpy has no bfloat16: the products
    of the raw bits): run fn in float32 on the exactly upcast operands and round its results to
    bfloat16 (to nearest even), what a GPU's bf16 MMA with float32 accumulation computes. No-op
    on GPU."""
    import functools
    import os

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if os.environ.get("TRITON_INTERPRET", "0") in ("", "0") or not any(
            isinstance(a, torch.Tensor) and a.dtype == torch.bfloat16 for a in args
        ):
            return fn(*args, **kwargs)
        up = [
            a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args
        ]
        out = fn(*up, **kwargs)
        down = lambda t: (
            t.to(torch.bfloat16) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
        )
        return tuple(down(t) for t in out) if isinstance(out, (tuple, list)) else down(out)

    return wrapper


def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 follows torch.backends.cuda.matmul.allow_tf32, like stock F.linear (IEEE by
    default); half types use the tensor cores in any case."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


@triton.jit
def _tile_ids(pid, R, Q, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(row tile, column tile) of program pid, 8 row tiles at a time (L2 reuse of B tiles)."""
    num_m = tl.cdiv(R, BLOCK_M)
    num_n = tl.cdiv(Q, BLOCK_N)
    per_group = 8 * num_n
    first_m = (pid // per_group) * 8
    rows = tl.minimum(num_m - first_m, 8)
    pid_m = first_m + (pid % per_group) % rows
    pid_n = (pid % per_group) // rows
    return pid_m, pid_n


@triton.autotune(
    configs=_configs(_GEMM_TILES, (16, 16, 16)),
    key=["M", "N", "K"],
    prune_configs_by=_prune("M", "N"),
)
@triton.jit
def _linear_act_fwd_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
    z_ptr,
    M,
    N,
    K,
    sxm,
    sxk,
    swn,
    swk,
    sym,
    syn,
    szm,
    szn,
    slope,
    HAS_BIAS: tl.constexpr,
    SAVE_PREACT: tl.constexpr,
    ACT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m, pid_n = _tile_ids(tl.program_id(0), M, N, BLOCK_M, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    x_row = offs_m.to(tl.int64) * sxm
    w_col = offs_n.to(tl.int64) * swn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        k64 = offs_k.to(tl.int64)
        a = tl.load(
            x_ptr + (x_row[:, None] + (k64 * sxk)[None, :]),
            mask=m_mask[:, None] & k_mask[None, :],
            other=0.0,
        )
        b = tl.load(
            w_ptr + ((k64 * swk)[:, None] + w_col[None, :]),
            mask=k_mask[:, None] & n_mask[None, :],
            other=0.0,
        )
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)

    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        acc = acc + bias[None, :]
    out_mask = m_mask[:, None] & n_mask[None, :]
    m64 = offs_m.to(tl.int64)
    n64 = offs_n.to(tl.int64)
    if SAVE_PREACT:
        tl.store(
            z_ptr + ((m64 * szm)[:, None] + (n64 * szn)[None, :]),
            acc.to(z_ptr.dtype.element_ty),
            mask=out_mask,
        )
    y = act_forward(acc, ACT, slope)
    tl.store(
        y_ptr + ((m64 * sym)[:, None] + (n64 * syn)[None, :]),
        y.to(y_ptr.dtype.element_ty),
        mask=out_mask,
    )


@triton.autotune(
    configs=_configs(_GEMM_TILES, (16, 16, 16)),
    key=["R", "Q", "T", "T_PER_SPLIT"],
    prune_configs_by=_prune("R", "Q"),
)
@triton.jit
def _linear_act_bwd_kernel(
    gy_ptr,
    s_ptr,
    b_ptr,
    c_ptr,
    gb_ptr,
    R,
    Q,
    T,
    T_PER_SPLIT,
    sgr,
    sgt,
    ssr,
    sst,
    sbt,
    sbq,
    scs,
    scr,
    scq,
    sbs,
    slope,
    ACT: tl.constexpr,
    BIAS_GRAD: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """C[split, r, q] = sum over this split's t of act_backward(gy, s)[r, t] * B[t, q]."""
    pid_m, pid_n = _tile_ids(tl.program_id(0), R, Q, BLOCK_M, BLOCK_N)
    split = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < R
    n_mask = offs_n < Q
    m64 = offs_m.to(tl.int64)
    n64 = offs_n.to(tl.int64)
    t_start = split.to(tl.int64) * T_PER_SPLIT
    t_len = tl.minimum(T - t_start, T_PER_SPLIT)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    bias_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for i in range(0, tl.cdiv(t_len, BLOCK_K)):
        offs_t = t_start + i * BLOCK_K + tl.arange(0, BLOCK_K)
        t_mask = offs_t < t_start + t_len
        a_mask = m_mask[:, None] & t_mask[None, :]
        # prologue: g = act'(z) * grad_y for this tile, in registers
        gy = tl.load(
            gy_ptr + ((m64 * sgr)[:, None] + (offs_t * sgt)[None, :]), mask=a_mask, other=0.0
        )
        if ACT == 0:
            gf = gy.to(tl.float32)
        else:
            s = tl.load(
                s_ptr + ((m64 * ssr)[:, None] + (offs_t * sst)[None, :]), mask=a_mask, other=0.0
            )
            gf = tl.where(a_mask, act_backward(gy, s, ACT, slope), 0.0)
        if BIAS_GRAD:
            bias_acc += tl.sum(gf, axis=1)
        a = gf.to(b_ptr.dtype.element_ty)
        b = tl.load(
            b_ptr + ((offs_t * sbt)[:, None] + (n64 * sbq)[None, :]),
            mask=t_mask[:, None] & n_mask[None, :],
            other=0.0,
        )
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)

    split64 = split.to(tl.int64)
    tl.store(
        c_ptr + (split64 * scs + (m64 * scr)[:, None] + (n64 * scq)[None, :]),
        acc.to(c_ptr.dtype.element_ty),
        mask=m_mask[:, None] & n_mask[None, :],
    )
    if BIAS_GRAD:
        if pid_n == 0:
            tl.store(
                gb_ptr + (split64 * sbs + m64), bias_acc.to(gb_ptr.dtype.element_ty), mask=m_mask
            )


# ---- launchers --------------------------------------------------------------------------------


@interp_bf16_in_float32
def linear_act_forward_triton(x, weight, bias, act, slope, save_preact):
    """(act(x @ weight^T + bias), the pre-activation or None) for x [M, K], in x's dtype."""
    bias = None if bias is None else bias.contiguous()  # the kernel reads b_ptr + channel
    m, k = x.shape
    n = weight.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    z = torch.empty_like(y) if save_preact else None
    if y.numel() == 0:
        return y, z
    zz = z if z is not None else y
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)
    with _device_guard(x):
        _linear_act_fwd_kernel[grid](
            x,
            weight,
            bias if bias is not None else weight,
            y,
            zz,
            m,
            n,
            k,
            *x.stride(),
            *weight.stride(),
            *y.stride(),
            *zz.stride(),
            float(slope),
            HAS_BIAS=bias is not None,
            SAVE_PREACT=z is not None,
            ACT=int(act),
            DOT_PRECISION=_dot_precision(x.dtype),
        )
    return y, z


@interp_bf16_in_float32
def linear_act_backward_triton(grad_y, saved, x, weight, act, slope, output_mask):
    """(grad_x, grad_weight, grad_bias), each None where output_mask says it is not needed."""
    need_x, need_w, need_b = (bool(v) for v in output_mask)
    act = int(act)
    if act != A.IDENTITY and (saved is None or saved.shape != grad_y.shape):
        raise RuntimeError(
            "linear backward (triton): the activation's saved tensor is missing or has the wrong "
            f"shape ({None if saved is None else list(saved.shape)} vs {list(grad_y.shape)})"
        )
    s = saved if act != A.IDENTITY else grad_y
    m, k = x.shape
    n = weight.shape[0]
    slope = float(slope)
    gx = gw = gb = None
    with _device_guard(x):
        if need_x:  # gx[M, K] = g[M, N] @ w[N, K]
            gx = torch.empty((m, k), dtype=x.dtype, device=x.device)
            if gx.numel():
                _gemm(grad_y, s, weight, gx, None, act, slope, transpose_g=False, split=1, per=n)
        if need_w:  # gw[N, K] = g^T[N, M] @ x[M, K], the bias gradient along
            gw = torch.empty((n, k), dtype=weight.dtype, device=weight.device)
            if k:
                gb = _wgrad(grad_y, s, x, gw, need_b, act, slope)
        if need_b and gb is None:
            gb = _bgrad(grad_y[:, :, None, None], s[:, :, None, None], act, slope, weight.dtype)
    return gx, gw, gb


def _wgrad(grad_y, s, x, gw, need_b, act, slope):
    """Writes g^T @ x into gw; returns the bias gradient (or None)."""
    m = x.shape[0]
    n, k = gw.shape
    split, per = _split(m, triton.cdiv(n, 64) * triton.cdiv(k, 64), x.device)
    if split == 1:
        gw_out = gw
        gb_out = torch.empty(n, dtype=gw.dtype, device=gw.device) if need_b else None
    else:
        gw_out = torch.empty((split, n, k), dtype=torch.float32, device=gw.device)
        gb_out = torch.empty((split, n), dtype=torch.float32, device=gw.device) if need_b else None
    _gemm(grad_y, s, x, gw_out, gb_out, act, slope, transpose_g=True, split=split, per=per)
    if split > 1:  # a fixed-order reduction of the partials: deterministic
        gw.copy_(gw_out.sum(0))
        if need_b:
            gb_out = gb_out.sum(0).to(gw.dtype)
    return gb_out


def _gemm(grad_y, s, b, c, gb, act, slope, transpose_g, split, per):
    """c[(split,) R, Q] = act_backward(grad_y, s)[^T] @ b, and gb[(split,) R] its row sums."""
    sg, ss = grad_y.stride(), s.stride()
    if transpose_g:
        sg, ss = sg[::-1], ss[::-1]
    r, t = (grad_y.shape[1], grad_y.shape[0]) if transpose_g else grad_y.shape
    q = b.shape[1]
    scs = c.stride(0) if c.dim() == 3 else 0
    sbs = gb.stride(0) if gb is not None and gb.dim() == 2 else 0
    grid = lambda meta: (triton.cdiv(r, meta["BLOCK_M"]) * triton.cdiv(q, meta["BLOCK_N"]), split)
    _linear_act_bwd_kernel[grid](
        grad_y,
        s,
        b,
        c,
        gb if gb is not None else c,
        r,
        q,
        t,
        per,
        *sg,
        *ss,
        *b.stride(),
        scs,
        *c.stride()[-2:],
        sbs,
        slope,
        ACT=act,
        BIAS_GRAD=gb is not None,
        DOT_PRECISION=_dot_precision(b.dtype),
    )
