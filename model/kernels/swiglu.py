"""SwiGLU's elementwise part, ``silu(a) * b``, as one Triton kernel each way.

    y = silu(a) * b,   silu(a) = a * sigmoid(a)
    da = dy * b * sigmoid(a) * (1 + a * (1 - sigmoid(a))),   db = dy * silu(a)

Computed in fp32, stored in the input dtype; the backward recomputes ``sigmoid(a)`` instead of
storing it. The reference is the model's eager code, ``kfm.model.layers.swiglu_torch``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kfm.model.kernels import contiguous

BLOCK = 1024


@triton.jit
def _swiglu_fwd(A, B, Y, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    a = tl.load(A + offs, mask=ok, other=0.0).to(tl.float32)
    b = tl.load(B + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(Y + offs, (a * tl.sigmoid(a) * b).to(Y.dtype.element_ty), mask=ok)


@triton.jit
def _swiglu_bwd(A, B, DY, DA, DB, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    a = tl.load(A + offs, mask=ok, other=0.0).to(tl.float32)
    b = tl.load(B + offs, mask=ok, other=0.0).to(tl.float32)
    dy = tl.load(DY + offs, mask=ok, other=0.0).to(tl.float32)
    sig = tl.sigmoid(a)
    tl.store(DA + offs, (dy * b * sig * (1.0 + a * (1.0 - sig))).to(DA.dtype.element_ty), mask=ok)
    tl.store(DB + offs, (dy * a * sig).to(DB.dtype.element_ty), mask=ok)


class SwiGLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b):
        a, b = contiguous(a, b)
        y = torch.empty_like(a)
        _swiglu_fwd[(triton.cdiv(a.numel(), BLOCK),)](a, b, y, a.numel(), BLOCK=BLOCK)
        ctx.save_for_backward(a, b)
        return y

    @staticmethod
    def backward(ctx, dy):
        a, b = ctx.saved_tensors
        da, db = torch.empty_like(a), torch.empty_like(b)
        (dy,) = contiguous(dy)
        _swiglu_bwd[(triton.cdiv(a.numel(), BLOCK),)](a, b, dy, da, db, a.numel(), BLOCK=BLOCK)
        return da, db


def swiglu(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``silu(a) * b`` with the Triton kernels (``a`` and ``b`` of the same shape)."""
    if a.shape != b.shape:
        raise ValueError(f"swiglu needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    return SwiGLUFunction.apply(a, b)
