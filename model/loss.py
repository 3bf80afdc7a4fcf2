"""Next-token cross-entropy with optional z-loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                       z_loss: float = 0.0) -> torch.Tensor:
    """Mean next-token cross-entropy over non-ignored targets, in fp32, plus
    ``z_loss * mean(logsumexp(logits)^2)`` (PaLM's auxiliary loss keeping the softmax normaliser near 1)."""
    flat, tgt = logits.flatten(0, 1).float(), targets.flatten(0, 1)
    loss = F.cross_entropy(flat, tgt, ignore_index=ignore_index)
    if z_loss:
        keep = tgt != ignore_index
        loss = loss + z_loss * torch.logsumexp(flat[keep], dim=-1).pow(2).mean()
    return loss
