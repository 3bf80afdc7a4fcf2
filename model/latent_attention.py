"""Multi-head latent attention (MLA: DeepSeek-V2 arXiv 2405.04434 section 2.1, DeepSeek-V3 arXiv 2412.19437
section 2.1.1), for the attention backends of ``kfm.model.attention``.

Per token x (dim wide), with H heads, q/k heads of d = d_nope + d_rope, value heads of d_v:

    q        = W_qb RMSNorm(W_qa x)     (or W_q x without a query latent)     H x d
    c, k_r   = W_kva x                  (the latent c: kv_lora_rank; k_r: d_rope, one for all heads)
    k_n, v   = W_kvb RMSNorm(c)                                               H x (d_nope + d_v)
    k        = [k_n ; RoPE(k_r)],  q = [q_n ; RoPE(q_r)],   out = W_o attention(q, k, v)

Training decompresses the keys and values once per layer and runs ordinary causal attention over them (packed
documents and windows as for grouped-query attention); an inference engine caches only ``c`` and ``k_r``.
DeepSeek stores the rotated dimensions interleaved (pairs ``(x0, x1), (x2, x3)...``): they are reordered to
Llama's half-split pairs before rotating, as ``transformers``' ``apply_rotary_pos_emb_interleave`` does; q and k
get the same order, so the products, and the outputs, are those of rotating the pairs in place.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kfm.model.attention import Documents, attention_impl
from kfm.model.config import ModelConfig, ModelRuntime
from kfm.model.rope import Rotary

LATENT_NORM_EPS = 1e-6
"""Epsilon of the two latent norms: DeepSeek's reference code and ``transformers`` build them with RMSNorm's
default of 1e-6 whatever the model's ``rms_norm_eps``."""


def deinterleave(x: torch.Tensor) -> torch.Tensor:
    """Pairs ``(x0, x1), (x2, x3)...`` of the last dimension as half-split pairs ``(x_i, x_{i+d/2})``."""
    return torch.cat([x[..., 0::2], x[..., 1::2]], dim=-1)


class LatentAttention(nn.Module):
    """Causal multi-head latent attention; the same ``forward`` as ``kfm.model.layers.Attention``."""

    def __init__(self, cfg: ModelConfig, layer: int, runtime: ModelRuntime, norm: type[nn.Module], kernels) -> None:
        super().__init__()
        m = cfg.mla
        self.n_heads, self.qk_dim, self.v_dim = cfg.n_heads, cfg.head_size, m.v_head_dim
        self.rope_dim, self.nope_dim, self.kv_rank = m.qk_rope_head_dim, cfg.head_size - m.qk_rope_head_dim, m.kv_lora_rank
        self.interleaved = m.rope_interleave
        heads = cfg.n_heads
        if m.q_lora_rank:
            self.wq = None
            self.wq_a = nn.Linear(cfg.dim, m.q_lora_rank, bias=False)
            self.q_norm = norm(m.q_lora_rank, LATENT_NORM_EPS, kernels)
            self.wq_b = nn.Linear(m.q_lora_rank, heads * self.qk_dim, bias=False)
        else:
            self.wq = nn.Linear(cfg.dim, heads * self.qk_dim, bias=False)
            self.wq_a = self.q_norm = self.wq_b = None
        self.wkv_a = nn.Linear(cfg.dim, m.kv_lora_rank + self.rope_dim, bias=False)
        self.kv_norm = norm(m.kv_lora_rank, LATENT_NORM_EPS, kernels)
        self.wkv_b = nn.Linear(m.kv_lora_rank, heads * (self.nope_dim + self.v_dim), bias=False)
        self.wo = nn.Linear(heads * self.v_dim, cfg.dim, bias=False)
        self.shared_key = nn.Identity()
        """Marks the rotated key all heads share (a no-op): a tensor-parallel rank holds some of the heads, so the
        parallelisation sums this key's gradient over the ranks here (``kfm.train.parallel.parallelize``)."""
        self.window = cfg.sliding_window if cfg.is_local(layer) else 0
        self.scale = cfg.rope.softmax_factor / math.sqrt(self.qk_dim)
        self.backend = runtime.attention_backend
        self._attention: dict[tuple, object] = {}
        self.core = None
        """A replacement of the attention core set from outside (as ``kfm.model.layers.Attention.core``)."""

    def in_weights(self) -> list[torch.Tensor]:
        """The projections drawn with the init's std (``Transformer.init_weights``), in draw order."""
        q = [self.wq.weight] if self.wq is not None else [self.wq_a.weight, self.wq_b.weight]
        return [*q, self.wkv_a.weight, self.wkv_b.weight]

    def norms(self) -> list[nn.Module]:
        return [n for n in (self.q_norm, self.kv_norm) if n is not None]

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        if self.wq is not None:
            return self.wq(x)
        return self.wq_b(self.q_norm(self.wq_a(x)))

    def rotate(self, x: torch.Tensor, rotary: Rotary) -> torch.Tensor:
        """RoPE on (batch, heads, seq, rope_dim) in the stored pair layout."""
        return rotary.apply(deinterleave(x) if self.interleaved else x)

    def forward(self, x: torch.Tensor, rotary: Rotary, docs: Documents | None = None) -> torch.Tensor:
        bsz, seq, _ = x.shape
        q = self.queries(x).view(bsz, seq, -1, self.qk_dim).transpose(1, 2)  # -1: a tensor-parallel rank's heads
        q_nope, q_rope = q.split([self.nope_dim, self.rope_dim], dim=-1)
        latent, k_rope = self.wkv_a(x).split([self.kv_rank, self.rope_dim], dim=-1)
        kv = self.wkv_b(self.kv_norm(latent)).view(bsz, seq, -1, self.nope_dim + self.v_dim)
        k_nope, v = kv.transpose(1, 2).split([self.nope_dim, self.v_dim], dim=-1)
        k_rope = self.shared_key(self.rotate(k_rope.unsqueeze(1), rotary)).expand(-1, q.shape[1], -1, -1)
        q = torch.cat([q_nope, self.rotate(q_rope, rotary)], dim=-1)
        k = torch.cat([k_nope, k_rope], dim=-1)
        kind = (q.device.type, q.dtype, docs is None)
        if kind not in self._attention:
            self._attention[kind] = self.core or attention_impl(self.backend, q, docs, self.window)
        # v is a view into the decompressed [k_nope; v]: a copy keeps half of it alive for the backward, not all
        out = self._attention[kind](q, k, v.contiguous(), docs, self.window, self.scale)
        return self.wo(out.transpose(1, 2).reshape(bsz, seq, -1))
