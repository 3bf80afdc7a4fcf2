"""Multi-head latent attention settings (DeepSeek-V2/V3, A.X K1, VAETKI)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LatentAttentionConfig:
    """Multi-head latent attention (MLA, DeepSeek-V2 arXiv 2405.04434 section 2.1; DeepSeek-V3 arXiv 2412.19437
    section 2.1.1): keys and values are decompressed per head from one shared latent of ``kv_lora_rank`` (what an
    inference cache stores), queries optionally through a latent of ``q_lora_rank``. Each q/k head is
    ``model.head_dim`` wide: ``head_dim - qk_rope_head_dim`` dimensions without position (from the latent) and
    ``qk_rope_head_dim`` rotated ones (the key's shared by all heads, "decoupled RoPE"); value heads are
    ``v_head_dim`` wide. ``kv_lora_rank`` 0: grouped-query attention instead."""

    kv_lora_rank: int = 0
    """Width of the compressed key/value latent (DeepSeek-V3: 512); 0: no latent attention."""
    q_lora_rank: int = 0
    """Width of the query latent (DeepSeek-V3: 1536); 0: queries projected at full rank (DeepSeek-V2-Lite)."""
    qk_rope_head_dim: int = 64
    """Rotated dimensions of each q/k head (DeepSeek-V3: 64 of 192)."""
    v_head_dim: int = 128
    """Width of each value head (DeepSeek-V3: 128)."""
    rope_interleave: bool = True
    """Rotate adjacent pairs ``(x0, x1), (x2, x3)...`` (DeepSeek's stored layout) rather than ``(x_i, x_{i+d/2})``
    (Llama's half-split); a property of the weights, carried through export and import."""

    def __post_init__(self) -> None:
        for key in ("kv_lora_rank", "q_lora_rank"):
            if getattr(self, key) < 0:
                raise ValueError(f"model.mla.{key} must be >= 0, got {getattr(self, key)}")
        if self.kv_lora_rank and (self.qk_rope_head_dim <= 0 or self.qk_rope_head_dim % 2):
            raise ValueError(f"model.mla.qk_rope_head_dim must be positive and even (rotated in pairs), got "
                             f"{self.qk_rope_head_dim}")
        if self.kv_lora_rank and self.v_head_dim <= 0:
            raise ValueError(f"model.mla.v_head_dim must be positive, got {self.v_head_dim}")

    @property
    def enabled(self) -> bool:
        return self.kv_lora_rank > 0
