"""Multi-token prediction (DeepSeek-V3, arXiv 2412.19437 section 2.2, eq. 21-25; ``kfm.model.config.MTPConfig``).

Module k (1..D) of a batch of ``tokens`` t (batch, seq) with the main model's final (normed) hidden states h_0:

    h'_k[i] = W_k [RMSNorm(Emb(t[i + k])) ; RMSNorm(h_{k-1}[i])]      (embedding first: the published layout)
    h_k     = RMSNorm(Block_k(h'_k))                                   (the norm: ``shared_head.norm``)
    p_k[i]  = softmax(Head(h_k[i]))  predicts t[i + k + 1]

with the main model's embedding and output head. Position i takes part while t[i + k] lies in the sequence and,
with packed documents, in i's document; the others are ignored (target -100). The loss is
``loss_weight / D * sum_k (CE_k summed over the positions taking part) / (next-token targets)``. Each module's block attends over the whole sequence like a global layer, and is a
mixture of experts in a MoE model, as ``transformers``' ``MtpModel`` builds it. Checkpoints store module k as
decoder layer ``n_layers + k - 1`` with ``enorm``, ``hnorm``, ``eh_proj`` and ``shared_head.norm`` beside the
block (DeepSeek-V3's layout), which serving engines read for speculative decoding.
"""

from __future__ import annotations

import torch
from torch import nn

from kfm.model.attention import Documents
from kfm.model.config import ModelConfig, ModelRuntime
from kfm.model.layers import KernelChoice, RMSNorm, TransformerBlock
from kfm.model.rope import Rotary


class MTPModule(nn.Module):
    """One depth: the two input norms, the projection, a transformer block and its output norm."""

    def __init__(self, cfg: ModelConfig, layer: int, runtime: ModelRuntime, kernels: KernelChoice,
                 feed_forward: nn.Module | None) -> None:
        super().__init__()
        self.enorm = RMSNorm(cfg.dim, cfg.norm_eps, kernels)
        self.hnorm = RMSNorm(cfg.dim, cfg.norm_eps, kernels)
        self.eh_proj = nn.Linear(2 * cfg.dim, cfg.dim, bias=False)
        self.block = TransformerBlock(cfg, layer, runtime, kernels, feed_forward)
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps, kernels)

    def forward(self, emb: torch.Tensor, h: torch.Tensor, rotary: Rotary, docs: Documents | None) -> torch.Tensor:
        x = self.eh_proj(torch.cat([self.enorm(emb), self.hnorm(h)], dim=-1))
        return self.norm(self.block(x, rotary, docs))


def shifted(x: torch.Tensor, k: int, fill: int) -> torch.Tensor:
    """``x`` (batch, seq) moved ``k`` positions left, the last ``k`` filled with ``fill``."""
    return torch.cat([x[:, k:], x.new_full((x.shape[0], k), fill)], dim=1)


class MultiTokenPrediction(nn.Module):
    """The D modules. ``stats`` (after training forwards): the summed loss of each depth and the forwards
    counted; ``take_stats`` returns and clears them (the trainer logs them)."""

    def __init__(self, cfg: ModelConfig, runtime: ModelRuntime, kernels: KernelChoice, make_ffn) -> None:
        super().__init__()
        self.depth, self.loss_weight = cfg.mtp.depth, cfg.mtp.loss_weight
        self.layers = nn.ModuleList(
            MTPModule(cfg, cfg.n_layers + k, runtime, kernels, make_ffn(cfg.n_layers + k))
            for k in range(cfg.mtp.depth))
        self.stats: torch.Tensor | None = None

    def losses(self, h: torch.Tensor, tokens: torch.Tensor, targets: torch.Tensor, rotary: Rotary,
               docs: Documents | None, embed: nn.Embedding, loss_fn) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Each depth's mean loss over the positions that take part, and the training term: ``loss_weight / depth``
        times the depths' summed losses over those positions divided by the number of next-token targets (as
        Megatron-LM normalises its MTP loss). Dividing by a depth's own count instead would weight a micro batch
        by how many of its positions reach k tokens ahead, which depends on how a batch is split into micro batches
        and ranks (documents end in different places); this way every layout trains alike. ``h``: the main model's
        final hidden states, ``loss_fn(h, targets)`` the main head's chunked cross-entropy."""
        out, total = [], h.new_zeros((), dtype=torch.float32)
        doc_ids = docs.doc_ids if docs is not None else None
        for k, module in enumerate(self.layers, start=1):
            ahead = shifted(tokens, k, 0)
            tgt = shifted(targets, k, -100)
            if doc_ids is not None:  # t[i + k] in another document: i takes no part at this depth
                tgt = tgt.masked_fill(shifted(doc_ids, k, -1) != doc_ids, -100)
            h = module(embed(ahead), h, rotary, docs)
            out.append(loss_fn(h, tgt))
            total = total + out[-1] * (tgt != -100).sum()
        count = (targets != -100).sum().clamp(min=1)
        return out, self.loss_weight / self.depth * total / count

    def record(self, losses: list[torch.Tensor]) -> None:
        new = torch.stack([loss.detach().float() for loss in losses] + [losses[0].new_ones((), dtype=torch.float32)])
        self.stats = new if self.stats is None else self.stats + new

    def take_stats(self) -> torch.Tensor | None:
        """(depth + 1,): the summed loss of each depth over the training forwards since the last call, then their
        count; None if none ran."""
        stats, self.stats = self.stats, None
        return stats


def with_gradient_of(value: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
    """``value`` as it is (bit for bit), with ``extra``'s gradient as well: ``value + (extra - extra.detach())``,
    whose forward adds an exact zero. The training loss keeps its meaning (the next-token loss) while the
    multi-token losses train the model."""
    return value + (extra - extra.detach())
