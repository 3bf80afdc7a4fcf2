"""Token permutation for mixture-of-experts layers: each expert's tokens made contiguous, and back.

    permute:    xp[i] = x[src[i]]                                  (rows sorted by expert)
    unpermute:  y[t]  = sum_k w[t, k] * yp[pos[t, k]]              (pos -1: a dropped pair, skipped)

Backward: permute's input gradient is the unweighted ``unpermute`` of the row gradients (each token sums the rows it
went to); unpermute's row gradient is ``dyp[i] = w[pair i] * dy[src[i]]`` (a gather, as permute) and its weight
gradient ``dw[t, k] = <dy[t], yp[pos[t, k]]>``. Every kernel gathers, none scatters: no atomics, deterministic.
Sums in fp32, stored in the input's dtype. The references are ``x[src]`` and ``kfm.model.moe.unpermute_torch``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kfm.model.kernels import contiguous, row_settings


@triton.jit
def _gather_rows(Y, IDX, SCALE, OUT, D, stride_y, stride_o, HAS_SCALE: tl.constexpr, BLOCK_D: tl.constexpr):
    """OUT[i] = SCALE[i] * Y[IDX[i]]."""
    i = tl.program_id(0)
    src = tl.load(IDX + i)
    offs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    ok = offs < D
    row = tl.load(Y + src * stride_y + offs, mask=ok, other=0.0).to(tl.float32)
    if HAS_SCALE:
        row = row * tl.load(SCALE + i).to(tl.float32)
    tl.store(OUT + i * stride_o + offs, row.to(OUT.dtype.element_ty), mask=ok)


@triton.jit
def _gather_sum(Y, POS, W, OUT, D, stride_y, stride_o, K: tl.constexpr, HAS_W: tl.constexpr, BLOCK_D: tl.constexpr):
    """OUT[t] = sum_k W[t, k] * Y[POS[t, k]] over the pairs with POS >= 0."""
    t = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    ok = offs < D
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for k in range(K):
        p = tl.load(POS + t * K + k)
        row = tl.load(Y + p * stride_y + offs, mask=ok & (p >= 0), other=0.0).to(tl.float32)
        if HAS_W:
            row = row * tl.load(W + t * K + k).to(tl.float32)
        acc += row
    tl.store(OUT + t * stride_o + offs, acc.to(OUT.dtype.element_ty), mask=ok)


@triton.jit
def _pair_dot(DY, Y, POS, OUT, D, stride_dy, stride_y, K: tl.constexpr, BLOCK_D: tl.constexpr):
    """OUT[t, k] = <DY[t], Y[POS[t, k]]> (0 for POS < 0)."""
    pair = tl.program_id(0)
    t = pair // K
    p = tl.load(POS + pair)
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs = d0 + tl.arange(0, BLOCK_D)
        ok = offs < D
        dy = tl.load(DY + t * stride_dy + offs, mask=ok, other=0.0).to(tl.float32)
        y = tl.load(Y + p * stride_y + offs, mask=ok & (p >= 0), other=0.0).to(tl.float32)
        acc += dy * y
    tl.store(OUT + pair, tl.sum(acc))


def _block(d: int) -> int:
    return min(row_settings(d, what="hidden width")[0], 1024)


def gather_rows(y: torch.Tensor, idx: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    (y,) = contiguous(y)
    out = torch.empty(idx.shape[0], y.shape[1], dtype=y.dtype, device=y.device)
    if idx.numel():
        block = _block(y.shape[1])
        _gather_rows[(idx.shape[0], triton.cdiv(y.shape[1], block))](
            y, idx, scale if scale is not None else idx, out, y.shape[1], y.stride(0), out.stride(0),
            HAS_SCALE=scale is not None, BLOCK_D=block)
    return out


def gather_sum(y: torch.Tensor, pos: torch.Tensor, w: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    (y,) = contiguous(y)
    tokens, k = pos.shape
    out = torch.empty(tokens, y.shape[1], dtype=dtype, device=y.device)
    block = _block(y.shape[1])
    _gather_sum[(tokens, triton.cdiv(y.shape[1], block))](
        y, pos, w if w is not None else pos, out, y.shape[1], y.stride(0), out.stride(0), K=k, HAS_W=w is not None,
        BLOCK_D=block)
    return out


class Permute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, src, pos):
        ctx.save_for_backward(pos)
        ctx.dtype = x.dtype
        return gather_rows(x, src)

    @staticmethod
    def backward(ctx, dxp):
        (pos,) = ctx.saved_tensors
        return gather_sum(dxp, pos, None, ctx.dtype), None, None


class Unpermute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, yp, pos, weights, src, pairs):
        weights = weights.float().contiguous()
        ctx.save_for_backward(yp, pos, weights, src, pairs)
        return gather_sum(yp, pos, weights, yp.dtype)

    @staticmethod
    def backward(ctx, dy):
        yp, pos, weights, src, pairs = ctx.saved_tensors
        (dy,) = contiguous(dy)
        dyp = gather_rows(dy, src, weights.view(-1)[pairs])
        dw = torch.empty(pos.shape, dtype=torch.float32, device=dy.device)
        block = _block(dy.shape[1])
        _pair_dot[(pos.numel(),)](dy, yp, pos, dw, dy.shape[1], dy.stride(0), yp.stride(0), K=pos.shape[1],
                                  BLOCK_D=block)
        return dyp, None, dw, None, None


def permute(x: torch.Tensor, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Rows ``x[src]`` (``pos``: where each (token, choice) pair went, for the backward)."""
    return Permute.apply(x, src, pos)


def unpermute(yp: torch.Tensor, pos: torch.Tensor, weights: torch.Tensor, src: torch.Tensor,
              pairs: torch.Tensor) -> torch.Tensor:
    """``y[t] = sum_k weights[t, k] yp[pos[t, k]]``; ``src``/``pairs``: each row's token and flat pair index."""
    return Unpermute.apply(yp, pos, weights, src, pairs)
