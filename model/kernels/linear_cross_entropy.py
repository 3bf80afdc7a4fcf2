"""Output projection + cross-entropy (+ z-loss) without materialising the full logits.

For hidden states ``h`` (N, D), output weight ``W`` (V, D) and targets ``t`` (N,), with
``logits = h W^T`` and ``lse = logsumexp(logits)`` per token, over the M non-ignored tokens:

    loss = (1/M) * sum_i [ lse_i - logits_i[t_i] + z * lse_i^2 ]
    d loss / d logits_i = (1/M) * [ softmax(logits_i) * (1 + 2 z lse_i) - onehot(t_i) ]

The forward walks the tokens in chunks: each chunk's logits (chunk x V, fp32) exist only
while its loss and its gradients for ``h`` and ``W`` are computed, so peak memory is one
chunk of logits plus ``W``'s gradient instead of N x V logits and their gradient (the same
approach as Liger-Kernel's fused linear cross-entropy). The backward only scales the stored
gradients by the incoming one.

``linear_cross_entropy_reference`` is the plain computation it must equal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_cross_entropy_reference(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                   ignore_index: int = -100, z_loss: float = 0.0) -> torch.Tensor:
    logits = (hidden @ weight.T).float()
    loss = F.cross_entropy(logits, targets, ignore_index=ignore_index)
    if z_loss:
        loss = loss + z_loss * torch.logsumexp(logits[targets != ignore_index], -1).pow(2).mean()
    return loss


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index: int, z_loss: float, chunk: int):
        n = hidden.shape[0]
        valid = targets != ignore_index
        count = int(valid.sum())
        scale = 1.0 / max(count, 1)
        needs_h, needs_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if needs_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needs_w else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for lo in range(0, n, chunk):
            h, t, keep = hidden[lo : lo + chunk], targets[lo : lo + chunk], valid[lo : lo + chunk]
            logits = (h @ weight.T).float()
            lse = torch.logsumexp(logits, dim=-1)
            safe_t = torch.where(keep, t, 0)
            picked = logits.gather(1, safe_t[:, None])[:, 0]
            total += torch.where(keep, lse - picked + z_loss * lse * lse, 0.0).sum()
            if grad_h is None and grad_w is None:
                continue
            # d/dlogits, reusing the logits buffer: softmax * (1 + 2 z lse) - onehot, on kept rows, / M
            grad = logits.sub_(lse[:, None]).exp_().mul_((1.0 + 2.0 * z_loss * lse)[:, None])
            grad.scatter_add_(1, safe_t[:, None], -torch.ones_like(lse)[:, None])
            grad.mul_((keep.float() * scale)[:, None])
            grad = grad.to(hidden.dtype)
            if grad_h is not None:
                grad_h[lo : lo + chunk] = grad @ weight
            if grad_w is not None:
                grad_w.addmm_(grad.T.float(), h.float())  # accumulated in fp32 whatever the input dtype
        ctx.save_for_backward(grad_h if grad_h is not None else torch.empty(0),
                              grad_w if grad_w is not None else torch.empty(0))
        ctx.has = (grad_h is not None, grad_w is not None)
        ctx.weight_dtype = weight.dtype
        return total * scale

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype) if ctx.has[0] else None
        gw = (grad_w * grad_out).to(ctx.weight_dtype) if ctx.has[1] else None
        return gh, gw, None, None, None, None


LOGITS_PER_CHUNK = 1 << 24
"""Default chunk: as many tokens as keep one chunk's fp32 logits at 64 MiB (128 tokens at a 128k vocabulary)."""


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                         z_loss: float = 0.0, chunk: int | None = None) -> torch.Tensor:
    """Mean cross-entropy (+ z-loss) of ``hidden @ weight.T`` against ``targets`` without the full logits.

    ``hidden`` (..., D) and ``targets`` (...) are flattened; ``chunk`` tokens' logits exist at a time
    (default: ``LOGITS_PER_CHUNK`` logits).
    """
    if chunk is None:
        chunk = max(16, LOGITS_PER_CHUNK // weight.shape[0])
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, got {chunk}")
    return _LinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1),
                                     ignore_index, float(z_loss), chunk)
