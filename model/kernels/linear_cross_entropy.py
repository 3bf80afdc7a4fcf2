"""Output projection + cross-entropy (+ z-loss) without materialising the full logits.

For hidden states ``h`` (N, D), output weight ``W`` (V, D) and targets ``t`` (N,), with
``logits = h W^T`` and ``lse = logsumexp(logits)`` per token, over the M non-ignored tokens:

    loss = (1/M) * sum_i [ lse_i - logits_i[t_i] + z * lse_i^2 ]
    d loss / d logits_i = (1/M) * [ softmax(logits_i) * (1 + 2 z lse_i) - onehot(t_i) ]

The forward walks the tokens in chunks: each chunk's logits (chunk x V, fp32) exist only
while its loss and its gradients for ``h`` and ``W`` are computed, so peak memory is one
chunk of logits plus ``W``'s gradient instead of N x V logits and their gradient (the same
approach as Liger-Kernel's fused linear cross-entropy). The backward only scales the stored
gradients by the incoming one. The two matrix products per chunk are PyTorch's (cuBLAS); the
per-row log-sum-exp, loss and in-place logits gradient are a Triton kernel (``_ce_rows``) when
``use_triton``, else the PyTorch code beside it.

``linear_cross_entropy_reference`` is the plain computation it must equal.
"""

from __future__ import annotations

import torch

from kfm.model.loss import cross_entropy_loss


def linear_cross_entropy_reference(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                   ignore_index: int = -100, z_loss: float = 0.0) -> torch.Tensor:
    """The plain computation: full logits, then ``model.loss.cross_entropy_loss``."""
    return cross_entropy_loss((hidden @ weight.T)[None], targets[None], ignore_index, z_loss)


def _ce_rows_torch(logits, t, keep, ignore_index: int, z_loss: float, scale: torch.Tensor, write_grad: bool):
    """Summed loss of the rows of an fp32 logits chunk; with ``write_grad`` the logits become their gradient."""
    lse = torch.logsumexp(logits, dim=-1)
    safe_t = torch.where(keep, t, 0)
    picked = logits.gather(1, safe_t[:, None])[:, 0]
    total = torch.where(keep, lse - picked + z_loss * lse * lse, 0.0).sum()
    if write_grad:  # softmax * (1 + 2 z lse) - onehot, on kept rows, / M
        logits.sub_(lse[:, None]).exp_().mul_((1.0 + 2.0 * z_loss * lse)[:, None])
        logits.scatter_add_(1, safe_t[:, None], -torch.ones_like(lse)[:, None])
        logits.mul_((keep.float() * scale)[:, None])
    return total


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index: int, z_loss: float, chunk: int, use_triton: bool):
        n = hidden.shape[0]
        valid = targets != ignore_index
        scale = 1.0 / valid.sum().clamp(min=1).float()  # a device tensor: no host synchronisation
        needs_h, needs_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if needs_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needs_w else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        if use_triton:
            from kfm.model.kernels.ce_rows import ce_rows_triton as rows
        else:
            rows = _ce_rows_torch
        want_grad = grad_h is not None or grad_w is not None
        for lo in range(0, n, chunk):
            h, t, keep = hidden[lo : lo + chunk], targets[lo : lo + chunk], valid[lo : lo + chunk]
            logits = (h @ weight.T).float().contiguous()
            total += rows(logits, t.contiguous(), keep, ignore_index, z_loss, scale, want_grad)
            if not want_grad:
                continue
            grad = logits.to(hidden.dtype)
            if grad_h is not None:
                grad_h[lo : lo + chunk] = grad @ weight
            if grad_w is not None:  # summed over chunks in fp32 whatever the input dtype
                if h.dtype == torch.float32:
                    grad_w.addmm_(grad.T, h)
                else:  # each chunk's product in bf16/fp16 on the tensor cores (cuBLAS accumulates it in fp32)
                    grad_w += grad.T @ h
        ctx.save_for_backward(grad_h if grad_h is not None else torch.empty(0),
                              grad_w if grad_w is not None else torch.empty(0))
        ctx.has = (grad_h is not None, grad_w is not None)
        ctx.weight_dtype = weight.dtype
        return total * scale

    @staticmethod
    def backward(ctx, grad_out):
        return (*stored_gradients(ctx, grad_out), None, None, None, None, None)


def stored_gradients(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The backward of a loss whose forward stored the gradients of its hidden states and weight (``ctx.has``
    says which): both scaled by the incoming gradient."""
    grad_h, grad_w = ctx.saved_tensors
    gh = grad_h * grad_out.to(grad_h.dtype) if ctx.has[0] else None
    gw = (grad_w * grad_out).to(ctx.weight_dtype) if ctx.has[1] else None
    return gh, gw


LOGITS_PER_CHUNK = 1 << 24
"""Default chunk on a CPU: as many tokens as keep one chunk's fp32 logits at 64 MiB (128 at a 128k vocabulary)."""
LOGITS_PER_CHUNK_CUDA = 1 << 28
"""Default chunk on a GPU: 1 GiB of fp32 logits (2,092 tokens at a 128k vocabulary); smaller chunks starve the
matrix products. Measured on an H100, bf16, 8192 tokens, D 4096, V 128256, forward + backward: 2^24 / 2^26 / 2^28
logits per chunk took 235 / 86 / 56 ms (with fp32 weight-gradient products, as before: 343 / 221 / 200 ms); the
unfused eager reference, which holds all 8192 x 128256 logits, 51 ms."""


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                         z_loss: float = 0.0, chunk: int | None = None, use_triton: bool = False) -> torch.Tensor:
    """Mean cross-entropy (+ z-loss) of ``hidden @ weight.T`` against ``targets`` without the full logits.

    ``hidden`` (..., D) and ``targets`` (...) are flattened; ``chunk`` tokens' logits exist at a time
    (default: ``LOGITS_PER_CHUNK`` logits, ``LOGITS_PER_CHUNK_CUDA`` on a GPU); ``use_triton`` runs the
    per-row part as a Triton kernel.
    """
    if chunk is None:
        chunk = max(16, (LOGITS_PER_CHUNK_CUDA if weight.is_cuda else LOGITS_PER_CHUNK) // weight.shape[0])
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, got {chunk}")
    return _LinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1),
                                     ignore_index, float(z_loss), chunk, use_triton)
