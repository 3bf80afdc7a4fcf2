"""Exact parameter and FLOP counts from a ``ModelConfig`` (no model needed). A mixture-of-experts layer counts all
its experts in the total and its router, ``top_k`` routed experts and the shared experts in the active count.
Latent attention counts its compression exactly (query latent, key/value latent with the shared rotated key, the
decompression, value heads of their own width); multi-token prediction modules count as the blocks they hold
plus their norms and projection (the embedding and output head are the main model's)."""

from __future__ import annotations

from kfm.model.config import ModelConfig


def _ffn_params(cfg: ModelConfig, layer: int, active: bool) -> int:
    """Matrix parameters of ``layer``'s feed-forward layer: dense SwiGLU, or router + routed experts (all of them,
    or the ``top_k`` a token uses with ``active``) + shared experts."""
    if not cfg.is_moe(layer):
        return 3 * cfg.dim * cfg.ffn_hidden_dim
    m = cfg.moe
    experts = m.top_k if active else m.n_experts
    return cfg.dim * m.n_experts + 3 * cfg.dim * m.expert_hidden_dim * (experts + m.n_shared_experts)


def _attention_params(cfg: ModelConfig) -> tuple[int, int]:
    """(matrix parameters, other parameters) of one attention layer."""
    d, h, hd = cfg.dim, cfg.n_heads, cfg.head_size
    if not cfg.mla.enabled:
        matrices = d * hd * (h + 2 * cfg.n_kv_heads) + h * hd * d
        other = (hd * (h + 2 * cfg.n_kv_heads) if cfg.qkv_bias else 0) + (2 * hd if cfg.qk_norm else 0)
        return matrices, other
    m = cfg.mla
    q = d * m.q_lora_rank + m.q_lora_rank * h * hd if m.q_lora_rank else d * h * hd
    kv = d * (m.kv_lora_rank + m.qk_rope_head_dim) + m.kv_lora_rank * h * (hd - m.qk_rope_head_dim + m.v_head_dim)
    return q + kv + h * m.v_head_dim * d, m.q_lora_rank + m.kv_lora_rank


def _block_params(cfg: ModelConfig, layer: int, active: bool = False) -> tuple[int, int]:
    """(matrix parameters, other parameters) of block ``layer`` (``n_layers + k``: multi-token module k + 1's)."""
    attn, other = _attention_params(cfg)
    post_norm = cfg.dim if cfg.is_moe(layer) and cfg.moe.post_norm else 0
    return attn + _ffn_params(cfg, layer, active), 2 * cfg.dim + other + post_norm


def _mtp_layers(cfg: ModelConfig) -> range:
    return range(cfg.n_layers, cfg.n_layers + cfg.mtp.depth)


def num_params(cfg: ModelConfig, embeddings: bool = True, active: bool = False, mtp: bool = True) -> int:
    """Parameter count (a tied embedding counted once); ``embeddings=False`` leaves out the input
    embedding (and the output projection when tied); ``active``: the parameters one token uses (MoE);
    ``mtp=False`` leaves out the multi-token prediction modules (as published totals and the ``transformers``
    classes, which drop them, do)."""
    total = sum(sum(_block_params(cfg, i, active)) for i in range(cfg.n_layers)) + cfg.dim
    if mtp:
        total += sum(sum(_block_params(cfg, i, active)) + 2 * cfg.dim * cfg.dim + 3 * cfg.dim
                     for i in _mtp_layers(cfg))
    emb = cfg.vocab_size * cfg.dim
    if cfg.tie_embeddings:
        return total + (emb if embeddings else 0)
    return total + emb + (emb if embeddings else 0)


def _keys(cfg: ModelConfig, layer: int, seq_len: int, causal: bool) -> float:
    """Keys each query of ``layer`` is counted against: all ``seq_len``, or with ``causal`` the mean a causal,
    windowed kernel visits."""
    if not causal:
        return seq_len
    w = cfg.sliding_window if cfg.is_local(layer) and cfg.sliding_window else seq_len
    w = min(w, seq_len)
    # query i sees min(i + 1, w) keys: the mean over i = 0..seq-1
    return (w * (w + 1) / 2 + (seq_len - w) * w) / seq_len


def flops_per_token(cfg: ModelConfig, seq_len: int, causal: bool = False, mtp: bool = True) -> int:
    """Forward FLOPs per token of a ``seq_len`` sequence: 2 per multiply-add of every weight matrix
    (the output projection included, the embedding lookup not) plus attention's two products
    (QK^T and PV), 2 * seq * heads * (qk head dim + value head dim) per layer.

    ``causal=False`` counts the full score matrix, as PaLM's MFU convention and PyTorch's
    ``FlopCounterMode`` do; ``causal=True`` only the work a causal, windowed kernel needs (about half,
    less on sliding-window layers). A training step costs 3x the forward (backward twice). MoE layers count
    their active matrices (router, ``top_k`` routed and the shared experts), as a dropless layer computes.
    ``mtp`` (default): with the multi-token prediction modules and their passes through the output head, which
    training runs (generation does not: ``mtp=False``)."""
    layers = list(range(cfg.n_layers)) + (list(_mtp_layers(cfg)) if mtp else [])
    matrices = sum(_block_params(cfg, i, active=True)[0] for i in layers)
    heads = 1 + (cfg.mtp.depth if mtp else 0)
    projections = (cfg.mtp.depth if mtp else 0) * 2 * cfg.dim * cfg.dim
    dense = 2 * (matrices + projections + heads * cfg.vocab_size * cfg.dim)
    width = cfg.head_size + cfg.v_head_size
    attn = sum(2 * _keys(cfg, layer, seq_len, causal) * cfg.n_heads * width for layer in layers)
    return int(round(dense + attn))
