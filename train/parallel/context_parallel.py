"""Context parallelism: each sequence split over the ``cp`` ranks, attention over all of it by gathering the keys
and values (the approach of the Llama 3 report, section 3.3.2), applied from outside the model.

Why all-gather and not a ring: packed documents and sliding windows make the mask irregular; with the keys and
values of the whole sequence on every rank, each rank masks its queries exactly as one process would (causal,
same document, within the window) with any attention kernel that takes a mask, and the all-gather's cost is
small next to attention's at long context when keys/values are few (GQA: 8 key/value heads of 64 query heads).
A ring (ring attention, torch's ``context_parallel``) overlaps the transfer with compute but handles only plain
causal masks; all-to-all (Ulysses) needs the heads divisible by ``cp`` and still the whole sequence per head.

Load balance: the sequence is cut into ``2 cp`` chunks and rank r takes chunks r and 2 cp - 1 - r, so every rank
holds as many early (cheap) as late (expensive) causal queries. The trainer gives each rank its chunks of the
tokens, the targets and the positions (the rotary tables then rotate by the tokens' true positions) and the
``Documents`` of the whole sequence; here each attention layer's core is replaced: gather the keys and values
over the ``cp`` group (differentiable: the backward reduce-scatters their gradients), mask by the global index of
each query and key, attend. The loss is each rank's mean over its tokens; the gradients are averaged over the data
and context ranks together (FSDP2 shards over both), which gives the step's mean over all tokens.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed._functional_collectives as funcol
import torch.nn.functional as F
from torch import nn

from kfm.model.attention import Documents


def chunk_indices(seq: int, cp: int, rank: int, device=None) -> torch.Tensor:
    """The global positions rank ``rank`` holds of a sequence of ``seq`` tokens: chunks ``rank`` and
    ``2 cp - 1 - rank`` of ``2 cp``."""
    size = seq // (2 * cp)
    first, second = rank * size, (2 * cp - 1 - rank) * size
    return torch.cat([torch.arange(first, first + size, device=device),
                      torch.arange(second, second + size, device=device)])


@functools.lru_cache(maxsize=8)
def _order(seq: int, cp: int, device) -> torch.Tensor:
    """The global position of each gathered key (the ranks' chunks in rank order)."""
    return torch.cat([chunk_indices(seq, cp, r, device) for r in range(cp)])


class GatheredAttention:
    """An attention core (``fn(q, k, v, docs, window, scale)``, as ``kfm.model.attention.attention_impl`` returns)
    for this rank's queries over the keys and values of the whole sequence, gathered over ``group``."""

    def __init__(self, group, cp: int, rank: int) -> None:
        self.group, self.cp, self.rank = group, cp, rank

    def mask(self, local: int, docs: Documents | None, window: int, device) -> torch.Tensor:
        seq = local * self.cp
        q = chunk_indices(seq, self.cp, self.rank, device)
        k = _order(seq, self.cp, device)
        allowed = k[None, :] <= q[:, None]
        if window:
            allowed = allowed & (q[:, None] - k[None, :] < window)
        allowed = allowed[None, None]
        if docs is not None:  # the documents of the whole sequence
            allowed = allowed & (docs.doc_ids[:, None, q, None] == docs.doc_ids[:, None, None, k])
        return allowed

    def __call__(self, q, k, v, docs: Documents | None, window: int, scale: float | None = None) -> torch.Tensor:
        k = funcol.all_gather_tensor_autograd(k.contiguous(), gather_dim=2, group=self.group)
        v = funcol.all_gather_tensor_autograd(v.contiguous(), gather_dim=2, group=self.group)
        local = q.shape[2]
        if docs is None:
            mask = self.mask(local, None, window, q.device)
        else:  # once per batch and window, shared by the layers
            mask = docs.cached(("cp", self.rank, window), lambda: self.mask(local, docs, window, q.device))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1],
                                              scale=scale)


def apply_context_parallel(model: nn.Module, cp_mesh) -> None:
    """Every attention layer's core replaced by ``GatheredAttention`` over ``cp_mesh``."""
    core = GatheredAttention(cp_mesh.get_group(), cp_mesh.size(), cp_mesh.get_local_rank())
    for module in model.modules():
        if hasattr(module, "core") and hasattr(module, "window"):
            module.core = core


def local_batch(inputs: torch.Tensor, targets: torch.Tensor, position_ids: torch.Tensor, cu_seqlens_flat,
                cp: int, rank: int, document_masking: bool):
    """This rank's part of a batch: (inputs, targets, positions) at its chunks, and the ``Documents`` of the whole
    rows (None without document masking; the positions are then the global ones)."""
    batch, seq = inputs.shape
    idx = chunk_indices(seq, cp, rank, inputs.device)
    if document_masking:
        positions = position_ids[:, idx]
        docs = Documents(cu_seqlens_flat, batch, seq, inputs.device)
    else:
        positions, docs = idx.expand(batch, -1), None
    return inputs[:, idx], targets[:, idx], positions, docs
