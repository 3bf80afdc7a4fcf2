"""Rotary position embeddings (RoPE) with long-context scaling.

Half-split layout: dimension ``i`` and ``i + head_dim/2`` form one rotating pair, as in
Hugging Face Llama/Qwen/EXAONE, so exported weights need no permutation. The frequency rules
follow the published methods: linear position interpolation (Chen et al. 2023), Llama 3.1's
frequency bands, and YaRN (Peng et al. 2023: NTK-by-parts interpolation plus an attention
temperature folded into cos/sin).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch

from kfm.model.config import RopeConfig


def inv_frequencies(head_dim: int, rope: RopeConfig, device=None) -> tuple[torch.Tensor, float]:
    """Per-pair rotation frequencies (``head_dim / 2``) and the factor cos/sin are scaled by."""
    exponents = torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim
    inv_freq = 1.0 / (rope.theta ** exponents)
    if rope.scaling == "none":
        return inv_freq, 1.0
    if rope.scaling == "linear":
        return inv_freq / rope.factor, 1.0
    if rope.scaling == "llama3":
        # Wavelengths shorter than original/high_freq_factor are kept, longer than original/low_freq_factor
        # divided by the factor, and those between interpolated smoothly.
        wavelen = 2 * math.pi / inv_freq
        smooth = (rope.original_max_seq_len / wavelen - rope.low_freq_factor) / (
            rope.high_freq_factor - rope.low_freq_factor)
        smooth = smooth.clamp(0.0, 1.0)
        return (1 - smooth) * inv_freq / rope.factor + smooth * inv_freq, 1.0
    # yarn: dimensions that rotate fewer than beta_slow times over the original context are interpolated
    # (divided by the factor), more than beta_fast times kept, a linear ramp between.
    def dim_for(rotations: float) -> float:
        return head_dim * math.log(rope.original_max_seq_len / (rotations * 2 * math.pi)) / (2 * math.log(rope.theta))

    low = max(math.floor(dim_for(rope.beta_fast)), 0)
    high = min(math.ceil(dim_for(rope.beta_slow)), head_dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(head_dim // 2, device=device, dtype=torch.float32) - low) / (high - low)).clamp(0.0, 1.0)
    keep = 1.0 - ramp
    scaled = inv_freq / rope.factor * (1 - keep) + inv_freq * keep
    return scaled, rope.attention_factor


def rope_tables(head_dim: int, max_seq_len: int, rope: RopeConfig, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape (max_seq_len, head_dim), fp32."""
    inv_freq, scale = inv_frequencies(head_dim, rope, device)
    pos = torch.arange(max_seq_len, device=device, dtype=torch.float32)
    freqs = torch.outer(pos, inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos() * scale, emb.sin() * scale


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (batch, heads, seq, head_dim) by position; cos/sin are (seq, head_dim) or
    (batch, 1, seq, head_dim) (per-document positions)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


@dataclass
class Rotary:
    """What every layer's RoPE needs: the tables and each token's position (None: ``0..seq-1``)."""

    cos: torch.Tensor
    """(max_seq_len, head_dim) table."""
    sin: torch.Tensor
    positions: torch.Tensor | None
    """(batch, seq) position of each token, e.g. restarting at every packed document."""
    seq_len: int

    @cached_property
    def rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin rows of these tokens, gathered once per forward (only the PyTorch path needs them)."""
        if self.positions is None:
            return self.cos[: self.seq_len], self.sin[: self.seq_len]
        return self.cos[self.positions].unsqueeze(1), self.sin[self.positions].unsqueeze(1)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``apply_rope`` on x (batch, heads, seq, head_dim)."""
        return apply_rope(x, *self.rows)
