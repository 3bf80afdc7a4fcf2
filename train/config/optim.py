"""The optimizer's config (``optim.*``)."""

from __future__ import annotations

from dataclasses import dataclass

from kfm.train.config.choices import Schedule, choice


@dataclass
class OptimConfig:
    """AdamW with linear warmup, then cosine decay or warmup-stable-decay (WSD)."""

    lr: float = 3e-3
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a share of ``lr``."""
    warmup_steps: int = 30
    """Steps of linear warmup from 0 to ``lr``."""
    weight_decay: float = 0.1
    """Decoupled weight decay on matrices (norms and embeddings are not decayed)."""
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    """Global gradient-norm clip; 0 disables clipping."""
    schedule: Schedule = Schedule.cosine
    """After warmup: ``cosine`` decay to ``lr * min_lr_ratio``; ``wsd`` holds ``lr`` then decays linearly
    over the last ``decay_fraction`` of the steps (warmup-stable-decay, as in MiniCPM); ``constant``."""
    decay_fraction: float = 0.2
    """``wsd``: share of all steps spent in the final decay."""

    def __post_init__(self) -> None:
        self.schedule = choice(Schedule, self.schedule, "optim.schedule")
        if not 0 < self.decay_fraction <= 1:
            raise ValueError(f"optim.decay_fraction must be in (0, 1], got {self.decay_fraction}")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1 or self.warmup_steps < 0:
            raise ValueError("optim.lr must be > 0, optim.min_lr_ratio in [0, 1], optim.warmup_steps >= 0")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1) or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("optim betas must be in [0, 1); weight_decay and grad_clip must be >= 0")
