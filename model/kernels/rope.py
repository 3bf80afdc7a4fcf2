"""Rotary embeddings applied to queries and keys in one Triton kernel launch.

Half-split layout (``model.rope``): for each head, pairs (x1, x2) = (x[:half], x[half:]) at
position p rotate by the angles in ``cos[p], sin[p]`` (whose two halves are equal):

    y1 = x1 cos - x2 sin,   y2 = x2 cos + x1 sin

The backward is the rotation by the opposite angle (the same kernel with ``sin`` negated).
Inputs are laid out (batch, seq, heads, head_dim), as the projections produce them; each
program rotates every head of one token of q (grid axis 1 = 0) or of k (axis 1 = 1), reading
cos/sin at that token's position (``positions``, so packed documents restart at 0).
The reference is the model's eager code, ``kfm.model.rope.Rotary.apply`` (on the (batch, heads, seq, dim)
layout the attention uses).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kfm.model.kernels import contiguous


@triton.jit
def _rope_kernel(Q, K, QO, KO, COS, SIN, POS, n_q_heads, n_k_heads, table_stride, sign,
                 HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    token, which = tl.program_id(0), tl.program_id(1)
    pos = tl.load(POS + token)
    cols = tl.arange(0, BLOCK_HALF)
    heads = tl.arange(0, BLOCK_H)
    c_ok = cols < HALF
    cos = tl.load(COS + pos * table_stride + cols, mask=c_ok, other=1.0).to(tl.float32)
    sin = tl.load(SIN + pos * table_stride + cols, mask=c_ok, other=0.0).to(tl.float32) * sign
    if which == 0:
        n_heads, src, dst = n_q_heads, Q, QO
    else:
        n_heads, src, dst = n_k_heads, K, KO
    ok = (heads[:, None] < n_heads) & c_ok[None, :]
    base = token * n_heads * 2 * HALF + heads[:, None] * 2 * HALF + cols[None, :]
    x1 = tl.load(src + base, mask=ok, other=0.0).to(tl.float32)
    x2 = tl.load(src + base + HALF, mask=ok, other=0.0).to(tl.float32)
    tl.store(dst + base, (x1 * cos[None, :] - x2 * sin[None, :]).to(dst.dtype.element_ty), mask=ok)
    tl.store(dst + base + HALF, (x2 * cos[None, :] + x1 * sin[None, :]).to(dst.dtype.element_ty), mask=ok)


def _launch(q, k, cos, sin, positions, sign: float):
    bsz, seq, hq, dim = q.shape
    qo, ko = torch.empty_like(q), torch.empty_like(k)
    half = dim // 2
    _rope_kernel[(bsz * seq, 2)](q, k, qo, ko, cos, sin, positions, hq, k.shape[2], cos.stride(0), sign,
                                 HALF=half, BLOCK_H=triton.next_power_of_2(max(hq, k.shape[2])),
                                 BLOCK_HALF=triton.next_power_of_2(half))
    return qo, ko


class RoPEFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, cos, sin, positions):
        ctx.save_for_backward(cos, sin, positions)
        return _launch(*contiguous(q, k), cos, sin, positions, 1.0)

    @staticmethod
    def backward(ctx, dq, dk):
        cos, sin, positions = ctx.saved_tensors
        dq, dk = _launch(*contiguous(dq, dk), cos, sin, positions, -1.0)
        return dq, dk, None, None, None


def apply_rope_qk(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q (batch, seq, heads, dim) and k (batch, seq, kv_heads, dim) by the (max_len, dim) cos/sin
    tables at ``positions`` (batch, seq; default ``0..seq-1``) with one kernel launch."""
    bsz, seq = q.shape[:2]
    if positions is None:
        positions = torch.arange(seq, device=q.device).expand(bsz, seq)
    cos, sin, positions = contiguous(cos, sin, positions.to(torch.int32))
    return RoPEFunction.apply(q, k, cos, sin, positions)
