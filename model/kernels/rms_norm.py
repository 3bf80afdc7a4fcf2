"""RMSNorm, optionally fused with the residual add, as Triton kernels.

For a row ``x`` of width D (after ``x = x + residual`` when a residual is given):

    rstd = 1 / sqrt(mean(x^2) + eps),   x_hat = x * rstd,   y = x_hat * w

and with ``g = dy * w``:

    dx = rstd * (g - x_hat * mean(g * x_hat)),   dw = sum over rows of dy * x_hat

Statistics are computed in fp32 whatever the input dtype. Layers: Triton kernels →
launchers (``_forward``/``_backward``) → ``RMSNormFunction`` (autograd) → ``rms_norm``;
the reference they must equal is the model's eager code, ``kfm.model.layers.rms_norm_torch`` (which, like
the kernel, rounds ``x_hat`` to the input dtype before scaling by ``w``). On CPU the kernels
run under the Triton interpreter (``TRITON_INTERPRET=1``), which is how they are tested here.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kfm.model.kernels import contiguous, row_settings


@triton.jit
def _rms_norm_fwd(X, R, W, Y, XOUT, RSTD, stride, D, eps, HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < D
    x = tl.load(X + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        x += tl.load(R + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(XOUT + row * stride + cols, x.to(XOUT.dtype.element_ty), mask=mask)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / D + eps)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    # As the eager code (kfm.model.layers.rms_norm_torch): normalise in fp32, round to the input's dtype, then
    # scale by the weight and round again.
    x_hat = (x * rstd).to(Y.dtype.element_ty).to(tl.float32)
    tl.store(Y + row * stride + cols, (x_hat * w).to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + row, rstd)


@triton.jit
def _rms_norm_bwd(DY, X, W, RSTD, DX, DW_PARTIAL, stride, n_rows, D, ROWS_PER_PROGRAM: tl.constexpr,
                  BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < D
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(ROWS_PER_PROGRAM):
        row = pid * ROWS_PER_PROGRAM + i
        if row < n_rows:
            x = tl.load(X + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + row)
            x_hat = x * rstd
            g = dy * w
            dx = rstd * (g - x_hat * (tl.sum(g * x_hat, axis=0) / D))
            tl.store(DX + row * stride + cols, dx.to(DX.dtype.element_ty), mask=mask)
            dw += dy * x_hat
    tl.store(DW_PARTIAL + pid * D + cols, dw, mask=mask)


def _forward(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None):
    d = x.shape[-1]
    x2, r2 = contiguous(x.reshape(-1, d), residual.reshape(-1, d) if residual is not None else None)
    block, warps = row_settings(d, what="RMSNorm row")
    y = torch.empty_like(x2)
    x_out = torch.empty_like(x2) if residual is not None else x2
    rstd = torch.empty(x2.shape[0], dtype=torch.float32, device=x.device)
    _rms_norm_fwd[(x2.shape[0],)](x2, r2 if r2 is not None else x2, weight, y, x_out, rstd, x2.stride(0), d, eps,
                                  HAS_RESIDUAL=residual is not None, BLOCK=block, num_warps=warps)
    return y.view_as(x), x_out.view_as(x), rstd


def _backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor):
    d = x.shape[-1]
    x2, dy2 = contiguous(x.reshape(-1, d), dy.reshape(-1, d))
    block, warps = row_settings(d, what="RMSNorm row")
    n = x2.shape[0]
    programs = min(n, 256)
    rows_per_program = triton.cdiv(n, programs)
    programs = triton.cdiv(n, rows_per_program)
    dx = torch.empty_like(x2)
    dw_partial = torch.empty(programs, d, dtype=torch.float32, device=x.device)
    _rms_norm_bwd[(programs,)](dy2, x2, weight, rstd, dx, dw_partial, x2.stride(0), n, d,
                               ROWS_PER_PROGRAM=rows_per_program, BLOCK=block, num_warps=warps)
    return dx.view_as(x), dw_partial.sum(0).to(weight.dtype)


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps: float, residual):
        y, x_sum, rstd = _forward(x, weight, eps, residual)
        ctx.save_for_backward(x_sum, weight, rstd)
        ctx.has_residual = residual is not None
        return y, x_sum

    @staticmethod
    def backward(ctx, dy, dx_sum):
        x_sum, weight, rstd = ctx.saved_tensors
        dx, dw = _backward(dy, x_sum, weight, rstd)
        if dx_sum is not None:  # the summed residual stream is an output too: its gradient adds in
            dx = dx + dx_sum
        return dx, dw, None, dx if ctx.has_residual else None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(RMSNorm(x + residual) * weight, x + residual) with the Triton kernels."""
    return RMSNormFunction.apply(x, weight, eps, residual)
