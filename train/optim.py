"""AdamW with decay only on matrices, and the learning-rate schedules (warmup, then cosine / WSD / constant)."""

from __future__ import annotations

import math

import torch
from torch import nn

from kfm.train.config import OptimConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "tok_embeddings" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused CUDA kernel on GPUs (one launch for all tensors, as torchtitan uses); foreach elsewhere.
    on_gpu = all(p.device.type == "cuda" for g in groups for p in g["params"])
    impl = {"fused": True} if on_gpu else {"foreach": True}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, **impl)


def lr_at(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Learning rate of (0-based) ``step``: linear warmup to ``lr`` over ``warmup_steps``, then
    ``cosine``: cosine decay to ``lr * min_lr_ratio`` at the last step;
    ``wsd``: ``lr`` until the last ``decay_fraction`` of the steps, then linear decay to ``lr * min_lr_ratio``;
    ``constant``: ``lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    floor = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "wsd":
        decay_steps = max(1, round(total_steps * cfg.decay_fraction))
        decay_start = max(cfg.warmup_steps, total_steps - decay_steps)
        if step < decay_start:
            return cfg.lr
        progress = min(1.0, (step - decay_start + 1) / max(1, total_steps - decay_start))
        return cfg.lr + (floor - cfg.lr) * progress
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
