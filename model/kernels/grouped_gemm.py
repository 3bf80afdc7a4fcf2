"""Grouped GEMM for mixture-of-experts layers: rows grouped by expert, one weight per group, in one launch.

    y[m] = x[m] @ w[e(m)]^T          rows of group e (contiguous, ``counts[e]`` of them), w: (E, N, K)
    dx[m] = dy[m] @ w[e(m)]          the same kernel, the weight read untransposed
    dw[e] = dy[rows of e]^T x[rows of e]

The forward and input-gradient kernel takes tiles of ``BLOCK_M`` rows inside one group: a group of ``c`` rows has
``ceil(c / BLOCK_M)`` tiles, and each program finds its group from the tiles' running sum (computed on the device,
so there is no host synchronisation; the grid is the upper bound ``ceil(M / BLOCK_M) + E`` and programs past the
last tile return). The weight-gradient kernel gives each program one expert and one output tile and walks that
expert's rows; an expert without rows gets a zero gradient. Products accumulate in fp32 and are stored in the
input's dtype. Under Triton's interpreter the operands are upcast to fp32 first (it multiplies bf16 wrongly).
The reference is the per-expert loop ``kfm.model.moe.expert_mm_loop``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kfm.model.kernels import contiguous, interpreting


@triton.jit
def _grouped_rows_kernel(A, B, C, TILE_END, GROUP_START, GROUP_END, N, K, n_groups,
                         stride_am, stride_be, stride_bk, stride_bn, stride_cm,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_E: tl.constexpr,
                         UPCAST: tl.constexpr):
    """C[m, n] = sum_k A[m, k] B[e(m), k, n] for one BLOCK_M x BLOCK_N tile of one group."""
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    offs_e = tl.arange(0, BLOCK_E)
    tile_end = tl.load(TILE_END + offs_e, mask=offs_e < n_groups, other=2147483647)
    e = tl.sum((tile_end <= pid_m).to(tl.int32))
    if e >= n_groups:
        return
    tiles_before = tl.load(TILE_END + e - 1, mask=e > 0, other=0)
    row0 = tl.load(GROUP_START + e) + (pid_m - tiles_before) * BLOCK_M
    row_end = tl.load(GROUP_END + e)
    offs_m = row0 + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = offs_m < row_end, offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        a = tl.load(A + offs_m[:, None] * stride_am + offs_k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(B + e * stride_be + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn,
                    mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        if UPCAST:
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc += tl.dot(a, b)
    tl.store(C + offs_m[:, None] * stride_cm + offs_n[None, :], acc.to(C.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _grouped_weight_grad_kernel(DY, X, DW, GROUP_START, GROUP_END, N, K, stride_dym, stride_xm,
                                stride_we, stride_wn, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                                BLOCK_K: tl.constexpr, UPCAST: tl.constexpr):
    """DW[e, n, k] = sum over the rows m of group e of DY[m, n] X[m, k]."""
    e, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start, end = tl.load(GROUP_START + e), tl.load(GROUP_END + e)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    n_ok, k_ok = offs_n < N, offs_k < K
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for m0 in range(start, end, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m_ok = offs_m < end
        dy = tl.load(DY + offs_m[:, None] * stride_dym + offs_n[None, :], mask=m_ok[:, None] & n_ok[None, :],
                     other=0.0)
        x = tl.load(X + offs_m[:, None] * stride_xm + offs_k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        if UPCAST:
            dy, x = dy.to(tl.float32), x.to(tl.float32)
        acc += tl.dot(tl.trans(dy), x)
    tl.store(DW + e * stride_we + offs_n[:, None] * stride_wn + offs_k[None, :], acc.to(DW.dtype.element_ty),
             mask=n_ok[:, None] & k_ok[None, :])


def _blocks() -> dict:
    """Tile sizes: small under the interpreter (each program is simulated), GPU-sized otherwise."""
    if interpreting():
        return dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32)
    return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32)


def _groups(counts: torch.Tensor, block_m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(running sum of each group's tiles, first row, end row) as int32 on the device."""
    counts = counts.to(torch.int32)
    end = counts.cumsum(0, dtype=torch.int32)
    tiles = ((counts + block_m - 1) // block_m).cumsum(0, dtype=torch.int32)
    return tiles, end - counts, end


def grouped_rows(a: torch.Tensor, b: torch.Tensor, counts: torch.Tensor, transpose_b: bool) -> torch.Tensor:
    """``a[rows of e] @ b[e]^T`` (``transpose_b``; b: (E, N, K)) or ``a[rows of e] @ b[e]`` (b: (E, K, N))."""
    (a,) = contiguous(a)
    n_groups = b.shape[0]
    if transpose_b:
        n, k = b.shape[1], b.shape[2]
        stride_bk, stride_bn = b.stride(2), b.stride(1)
    else:
        k, n = b.shape[1], b.shape[2]
        stride_bk, stride_bn = b.stride(1), b.stride(2)
    blocks = _blocks()
    tile_end, start, end = _groups(counts, blocks["BLOCK_M"])
    out = torch.empty(a.shape[0], n, dtype=a.dtype, device=a.device)
    grid = (triton.cdiv(a.shape[0], blocks["BLOCK_M"]) + n_groups, triton.cdiv(n, blocks["BLOCK_N"]))
    _grouped_rows_kernel[grid](a, b, out, tile_end, start, end, n, k, n_groups, a.stride(0), b.stride(0),
                               stride_bk, stride_bn, out.stride(0), BLOCK_E=triton.next_power_of_2(n_groups),
                               UPCAST=interpreting(), **blocks)
    return out


def grouped_weight_grad(dy: torch.Tensor, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(E, N, K): each group's ``dy^T x``."""
    dy, x = contiguous(dy, x)
    n_groups, n, k = counts.shape[0], dy.shape[1], x.shape[1]
    blocks = _blocks()
    _, start, end = _groups(counts, blocks["BLOCK_M"])
    dw = torch.empty(n_groups, n, k, dtype=x.dtype, device=x.device)
    grid = (n_groups, triton.cdiv(n, blocks["BLOCK_N"]), triton.cdiv(k, blocks["BLOCK_K"]))
    _grouped_weight_grad_kernel[grid](dy, x, dw, start, end, n, k, dy.stride(0), x.stride(0), dw.stride(0),
                                      dw.stride(1), UPCAST=interpreting(), **blocks)
    return dw


class GroupedMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, counts):
        ctx.save_for_backward(x, w, counts)
        return grouped_rows(x, w, counts, transpose_b=True)

    @staticmethod
    def backward(ctx, dy):
        x, w, counts = ctx.saved_tensors
        dx = grouped_rows(dy, w, counts, transpose_b=False) if ctx.needs_input_grad[0] else None
        dw = grouped_weight_grad(dy, x, counts).to(w.dtype) if ctx.needs_input_grad[1] else None
        return dx, dw, None


def grouped_mm(x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``x[rows of e] @ w[e]^T`` for the expert groups of ``counts`` (x: (M, K) sorted by group, w: (E, N, K))."""
    if x.shape[1] != w.shape[2] or counts.shape[0] != w.shape[0]:
        raise ValueError(f"grouped_mm: x {tuple(x.shape)}, w {tuple(w.shape)} and {counts.shape[0]} group counts "
                         "do not fit (x: (rows, K), w: (groups, N, K))")
    return GroupedMM.apply(x, w, counts)
