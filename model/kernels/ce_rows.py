"""The per-row part of ``linear_cross_entropy`` as a Triton kernel: log-sum-exp, loss and, in place, the
logits' gradient of one fp32 chunk of logits (``_ce_rows_torch`` in ``linear_cross_entropy`` is the same in
PyTorch). Kept apart so that the loss imports Triton only when it runs this kernel."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

CE_BLOCK = 1024


@triton.jit
def _ce_rows_kernel(LOGITS, TARGETS, LOSS, stride, vocab, z_loss, SCALE, ignore_index,
                    WRITE_GRAD: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    base = LOGITS + row * stride
    cols = tl.arange(0, BLOCK)
    t = tl.load(TARGETS + row)
    keep = t != ignore_index
    t_safe = tl.where(keep, t, 0)
    m = tl.load(base).to(tl.float32)
    s = m * 0.0
    for start in range(0, vocab, BLOCK):  # online log-sum-exp over the vocabulary
        x = tl.load(base + start + cols, mask=start + cols < vocab, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)
    picked = tl.load(base + t_safe).to(tl.float32)
    tl.store(LOSS + row, tl.where(keep, lse - picked + z_loss * lse * lse, 0.0))
    if WRITE_GRAD:  # d loss / d logits, over the logits in place
        coef = tl.where(keep, tl.load(SCALE), 0.0)
        for start in range(0, vocab, BLOCK):
            offs = start + cols
            ok = offs < vocab
            x = tl.load(base + offs, mask=ok, other=0.0).to(tl.float32)
            g = tl.exp(x - lse) * (1.0 + 2.0 * z_loss * lse)
            g = tl.where(offs == t_safe, g - 1.0, g) * coef
            tl.store(base + offs, g, mask=ok)


def ce_rows_triton(logits, t, keep, ignore_index: int, z_loss: float, scale: torch.Tensor, write_grad: bool):
    """``scale``: a 0-d fp32 device tensor (1 / the tokens counted), read by the kernel: no host synchronisation."""
    loss = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
    _ce_rows_kernel[(logits.shape[0],)](logits, t, loss, logits.stride(0), logits.shape[1], z_loss, scale,
                                        ignore_index, WRITE_GRAD=write_grad, BLOCK=CE_BLOCK)
    return loss.sum()
