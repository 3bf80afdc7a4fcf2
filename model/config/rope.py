"""Rotary position embedding settings."""

from __future__ import annotations

import math
from dataclasses import dataclass

from kfm.model.config.choices import RopeScaling, choice


@dataclass
class RopeConfig:
    """Rotary position embedding: base frequency and optional long-context scaling."""

    theta: float = 10000.0
    """Base frequency."""
    scaling: RopeScaling = RopeScaling.none
    """``none``, ``linear`` (position interpolation), ``llama3`` (Llama 3.1's frequency-band rule) or ``yarn``."""
    factor: float = 1.0
    """Context extension factor (scaled types)."""
    original_max_seq_len: int = 8192
    """Context length the model was pretrained at, before extension (``llama3``, ``yarn``)."""
    low_freq_factor: float = 1.0
    """``llama3``: wavelengths above ``original_max_seq_len / low_freq_factor`` are divided by ``factor``."""
    high_freq_factor: float = 4.0
    """``llama3``: wavelengths below ``original_max_seq_len / high_freq_factor`` are kept."""
    beta_fast: float = 32.0
    """``yarn``: rotations from which dimensions are kept (extrapolated)."""
    beta_slow: float = 1.0
    """``yarn``: rotations below which dimensions are interpolated."""
    mscale: float = 0.0
    """``yarn`` as DeepSeek-V2/V3 set it (with ``mscale_all_dim``): cos/sin are scaled by
    ``m(mscale) / m(mscale_all_dim)`` with ``m(a) = 0.1 a ln(factor) + 1``, instead of YaRN's ``m(1)``. 0: unset."""
    mscale_all_dim: float = 0.0
    """``yarn``, DeepSeek: latent attention's softmax scale is multiplied by ``m(mscale_all_dim)^2``, on every
    dimension of the q/k product (``transformers``' ``yarn_apply_mscale``). 0: unset."""

    def __post_init__(self) -> None:
        self.scaling = choice(RopeScaling, self.scaling, "model.rope.scaling")
        if self.theta <= 0:
            raise ValueError(f"model.rope.theta must be positive, got {self.theta}")
        if self.scaling != "none" and self.factor < 1.0:
            raise ValueError(f"model.rope.factor must be >= 1 with scaling '{self.scaling}', got {self.factor}")
        if self.scaling == "llama3" and not self.high_freq_factor > self.low_freq_factor > 0:
            raise ValueError("model.rope: llama3 scaling needs high_freq_factor > low_freq_factor > 0")
        if (self.mscale or self.mscale_all_dim) and self.scaling != "yarn":
            raise ValueError("model.rope.mscale and mscale_all_dim belong to yarn scaling: set model.rope.scaling=yarn "
                             "or leave them 0")
        if self.mscale < 0 or self.mscale_all_dim < 0:
            raise ValueError("model.rope.mscale and mscale_all_dim must be >= 0")

    def yarn_mscale(self, a: float = 1.0) -> float:
        """YaRN's attention factor ``0.1 a ln(factor) + 1`` (1 without extension)."""
        return 0.1 * a * math.log(self.factor) + 1.0 if self.factor > 1 else 1.0

    @property
    def attention_factor(self) -> float:
        """What cos/sin are multiplied by (YaRN's temperature, folded into the rotation)."""
        if self.scaling != "yarn":
            return 1.0
        if self.mscale and self.mscale_all_dim:
            return self.yarn_mscale(self.mscale) / self.yarn_mscale(self.mscale_all_dim)
        return self.yarn_mscale()

    @property
    def softmax_factor(self) -> float:
        """What latent attention's softmax scale is multiplied by (DeepSeek's ``mscale_all_dim``)."""
        if self.scaling != "yarn" or not self.mscale_all_dim:
            return 1.0
        return self.yarn_mscale(self.mscale_all_dim) ** 2

