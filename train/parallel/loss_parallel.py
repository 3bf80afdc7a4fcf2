"""The output projection and the cross-entropy with the vocabulary split over the tensor-parallel ranks
(Megatron-LM's vocabulary-parallel cross-entropy), chunked like ``kfm.model.kernels.linear_cross_entropy``.

Each rank holds rows ``[start, start + V/tp)`` of the output weight (``Shard(0)``; with tied embeddings the same
rows of the embedding). For a chunk of tokens it computes its part of the logits (chunk x V/tp, fp32) and, over
the ranks, the maximum (all-reduce max), the sum of exponentials and the target's logit (all-reduce sum: only the
rank holding the target contributes it), hence every token's log-sum-exp and loss; the gradient of its logits
part is ``softmax (1 + 2 z lse) - onehot`` on its columns, from which it computes its rows of the weight gradient
and its part of the hidden states' gradient, summed over the ranks (the hidden states are the same on every rank).
No rank ever holds a whole row of logits; per chunk, three all-reduces of chunk-sized vectors and one of the
chunk's hidden-state gradient.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from kfm.model.kernels.linear_cross_entropy import LOGITS_PER_CHUNK, LOGITS_PER_CHUNK_CUDA, stored_gradients


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, start: int, group, ignore_index: int, z_loss: float, chunk: int):
        n, rows = hidden.shape[0], weight.shape[0]
        valid = targets != ignore_index
        scale = 1.0 / valid.sum().clamp(min=1).float()
        grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if ctx.needs_input_grad[1] \
            else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for lo in range(0, n, chunk):
            h, t, keep = hidden[lo: lo + chunk], targets[lo: lo + chunk], valid[lo: lo + chunk]
            logits = (h @ weight.T).float()
            top = logits.max(dim=-1).values
            dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
            local = t - start
            mine = keep & (local >= 0) & (local < rows)
            picked = torch.where(mine, logits.gather(1, torch.where(mine, local, 0)[:, None])[:, 0], 0.0)
            logits.sub_(top[:, None]).exp_()
            sums = torch.stack([logits.sum(-1), picked])
            dist.all_reduce(sums, group=group)
            lse = sums[0].log() + top
            total += torch.where(keep, lse - sums[1] + z_loss * lse * lse, 0.0).sum()
            if grad_h is None and grad_w is None:
                continue
            # logits now hold exp(logit - max): the softmax is that / sum; its gradient written in place
            logits.mul_(((1.0 + 2.0 * z_loss * lse) / sums[0])[:, None])
            rows_of = torch.arange(len(t), device=t.device)[mine]
            logits[rows_of, local[mine]] -= 1.0
            logits.mul_((keep.float() * scale)[:, None])
            grad = logits.to(hidden.dtype)
            if grad_h is not None:
                part = grad @ weight
                dist.all_reduce(part, group=group)  # the hidden states feed every rank's columns
                grad_h[lo: lo + chunk] = part
            if grad_w is not None:  # summed over chunks in fp32, as the unsplit loss does
                if h.dtype == torch.float32:
                    grad_w.addmm_(grad.T, h)
                else:
                    grad_w += grad.T @ h
        ctx.save_for_backward(grad_h if grad_h is not None else torch.empty(0),
                              grad_w if grad_w is not None else torch.empty(0))
        ctx.has, ctx.weight_dtype = (grad_h is not None, grad_w is not None), weight.dtype
        return total * scale

    @staticmethod
    def backward(ctx, grad_out):
        return (*stored_gradients(ctx, grad_out), None, None, None, None, None, None)


def vocab_parallel_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, start: int,
                                 group, ignore_index: int = -100, z_loss: float = 0.0,
                                 chunk: int | None = None) -> torch.Tensor:
    """Mean cross-entropy (+ z-loss) of ``hidden @ W.T`` against ``targets`` where this rank holds rows
    ``[start, start + len(weight))`` of ``W`` (the other rows on the other ranks of ``group``)."""
    if chunk is None:
        chunk = max(16, (LOGITS_PER_CHUNK_CUDA if weight.is_cuda else LOGITS_PER_CHUNK) // weight.shape[0])
    return _VocabParallelCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1),
                                            start, group, ignore_index, float(z_loss), chunk)


class VocabParallelLoss:
    """``Transformer.loss_core``: the loss with the output weight a ``Shard(0)`` DTensor over ``tp_mesh``."""

    def __init__(self, tp_mesh) -> None:
        self.group, self.rank = tp_mesh.get_group(), tp_mesh.get_local_rank()

    def __call__(self, hidden, weight, targets, z_loss: float = 0.0, chunk: int | None = None) -> torch.Tensor:
        local = weight.to_local()
        return vocab_parallel_cross_entropy(hidden, local, targets, self.rank * local.shape[0], self.group,
                                            z_loss=z_loss, chunk=chunk)
