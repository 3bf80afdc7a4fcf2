"""Exact parameter and FLOP counts from a ``ModelConfig`` (no model needed). A mixture-of-experts layer counts all
its experts in the total and its router, ``top_k`` routed experts and the shared experts in the active count."""

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


def _block_params(cfg: ModelConfig, layer: int, active: bool = False) -> tuple[int, int]:
    """(matrix parameters, other parameters) of block ``layer``."""
    hd = cfg.head_size
    attn = cfg.dim * hd * (cfg.n_heads + 2 * cfg.n_kv_heads) + cfg.n_heads * hd * cfg.dim
    other = 2 * cfg.dim + (hd * (cfg.n_heads + 2 * cfg.n_kv_heads) if cfg.qkv_bias else 0) + (
        2 * hd if cfg.qk_norm else 0)
    return attn + _ffn_params(cfg, layer, active), other


def num_params(cfg: ModelConfig, embeddings: bool = True, active: bool = False) -> int:
    """Parameter count (a tied embedding counted once); ``embeddings=False`` leaves out the input
    embedding (and the output projection when tied); ``active``: the parameters one token uses (MoE)."""
    total = sum(sum(_block_params(cfg, i, active)) for i in range(cfg.n_layers)) + cfg.dim
    emb = cfg.vocab_size * cfg.dim
    if cfg.tie_embeddings:
        return total + (emb if embeddings else 0)
    return total + emb + (emb if embeddings else 0)


def flops_per_token(cfg: ModelConfig, seq_len: int, causal: bool = False) -> int:
    """Forward FLOPs per token of a ``seq_len`` sequence: 2 per multiply-add of every weight matrix
    (the output projection included, the embedding lookup not) plus attention's two products
    (QK^T and PV), 4 * seq * heads * head_dim per layer.

    ``causal=False`` counts the full score matrix, as PaLM's MFU convention and PyTorch's
    ``FlopCounterMode`` do; ``causal=True`` only the work a causal, windowed kernel needs (about half,
    less on sliding-window layers). A training step costs 3x the forward (backward twice). MoE layers count
    their active matrices (router, ``top_k`` routed and the shared experts), as a dropless layer computes."""
    matrices = sum(_block_params(cfg, i, active=True)[0] for i in range(cfg.n_layers))
    dense = 2 * (matrices + cfg.vocab_size * cfg.dim)
    attn = 0
    for layer in range(cfg.n_layers):
        if not causal:
            keys = seq_len
        else:
            w = cfg.sliding_window if cfg.is_local(layer) and cfg.sliding_window else seq_len
            w = min(w, seq_len)
            # query i sees min(i + 1, w) keys: the mean over i = 0..seq-1
            keys = (w * (w + 1) / 2 + (seq_len - w) * w) / seq_len
        attn += 4 * keys * cfg.n_heads * cfg.head_size
    return int(round(dense + attn))
