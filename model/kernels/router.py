"""The MoE router's choice in one kernel: scores, expert bias, group limit and top-k for a row of logits.

For each token (one program): ``s = softmax(l)`` or ``sigmoid(l)``; ``p = s + bias``; with ``G > 1`` groups each
group scores the sum of its two best ``p`` and only the ``topk_group`` best groups stay; the ``K`` experts with the
highest ``p`` are taken in descending order (ties to the lower index) and their ``s`` returned. Normalisation and
scaling of the weights, and the backward, are ``kfm.model.moe.route_weights`` in PyTorch on the (T, K) choice:
the choice itself has no gradient, so the kernel only replaces the (T, E) selection work. The reference is
``kfm.model.moe.route_torch``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kfm.model.kernels import contiguous


@triton.jit
def _route_kernel(LOGITS, BIAS, SCORES_OUT, EXPERTS_OUT, E, stride_l, K: tl.constexpr, G: tl.constexpr,
                  TOPK_GROUP: tl.constexpr, SOFTMAX: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_E: tl.constexpr,
                  BLOCK_G: tl.constexpr):
    t = tl.program_id(0)
    offs = tl.arange(0, BLOCK_E)
    ok = offs < E
    logits = tl.load(LOGITS + t * stride_l + offs, mask=ok, other=-float("inf")).to(tl.float32)
    if SOFTMAX:
        z = tl.exp(logits - tl.max(logits, 0))
        scores = z / tl.sum(z, 0)
    else:
        scores = tl.sigmoid(logits)
    pick = scores
    if HAS_BIAS:
        pick = pick + tl.load(BIAS + offs, mask=ok, other=0.0).to(tl.float32)
    pick = tl.where(ok, pick, -float("inf"))
    if G > 1:
        per_group = E // G
        group = offs // per_group
        goffs = tl.arange(0, BLOCK_G)
        gscore = tl.full((BLOCK_G,), -float("inf"), tl.float32)
        for g in range(G):
            mine = tl.where(group == g, pick, -float("inf"))
            first = tl.argmax(mine, 0)
            best = tl.max(mine, 0)
            second = tl.max(tl.where(offs == first, -float("inf"), mine), 0)
            gscore = tl.where(goffs == g, best + second, gscore)
        keep = tl.zeros((BLOCK_E,), tl.int1)
        for _ in range(TOPK_GROUP):
            g = tl.argmax(gscore, 0)
            keep = keep | (group == g)
            gscore = tl.where(goffs == g, -float("inf"), gscore)
        pick = tl.where(keep, pick, -float("inf"))
    for k in range(K):
        e = tl.argmax(pick, 0)
        tl.store(EXPERTS_OUT + t * K + k, e.to(tl.int64))
        tl.store(SCORES_OUT + t * K + k, tl.sum(tl.where(offs == e, scores, 0.0), 0))
        pick = tl.where(offs == e, -float("inf"), pick)


def route_choice(logits: torch.Tensor, bias: torch.Tensor | None, top_k: int, score_func: str, n_group: int,
                 topk_group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen scores (T, K) fp32, experts (T, K) int64), experts in descending order of score + bias."""
    (logits,) = contiguous(logits)
    tokens, n = logits.shape
    scores = torch.empty(tokens, top_k, dtype=torch.float32, device=logits.device)
    experts = torch.empty(tokens, top_k, dtype=torch.int64, device=logits.device)
    if tokens:
        _route_kernel[(tokens,)](logits, bias if bias is not None else logits, scores, experts, n, logits.stride(0),
                                 K=top_k, G=n_group, TOPK_GROUP=topk_group, SOFTMAX=score_func == "softmax",
                                 HAS_BIAS=bias is not None, BLOCK_E=triton.next_power_of_2(n),
                                 BLOCK_G=triton.next_power_of_2(n_group))
    return scores, experts
