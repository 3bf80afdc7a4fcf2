"""The latent-attention layer both latent-attention benchmarks time (``mla_cpu.py``, ``mla_gpu.py``)."""

from __future__ import annotations


def latent_layer(dim: int, heads: int, q_rank: int, kv_rank: int, rope: int, qk: int, v: int, seq: int, std: float):
    """(config, kfm's ``LatentAttention`` on SDPA): weights normal(0, ``std``) drawn from seed 0, norms in [0.5, 1.5)."""
    import torch

    from kfm.model.config import LatentAttentionConfig, ModelConfig, ModelRuntime
    from kfm.model.latent_attention import LatentAttention
    from kfm.model.layers import KernelChoice, RMSNorm

    cfg = ModelConfig(dim=dim, n_heads=heads, n_kv_heads=heads, head_dim=qk, max_seq_len=seq, norm_eps=1e-6,
                      mla=LatentAttentionConfig(kv_lora_rank=kv_rank, q_lora_rank=q_rank, qk_rope_head_dim=rope,
                                                v_head_dim=v))
    torch.manual_seed(0)
    layer = LatentAttention(cfg, 0, ModelRuntime(attention_backend="sdpa"), RMSNorm, KernelChoice())
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(std=std) if p.ndim == 2 else p.uniform_(0.5, 1.5)
    return cfg, layer
