"""Multi-token prediction settings (DeepSeek-V3)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MTPConfig:
    """Multi-token prediction (DeepSeek-V3, arXiv 2412.19437 section 2.2): ``depth`` sequential modules after the
    last layer; module k takes each position's hidden state from the one before (the main model's final one for
    k = 1) and the embedding of the token k positions ahead, each RMS-normalised, concatenated, projected back to
    ``model.dim``, through one transformer block and a norm, and predicts the token k + 1 ahead with the shared
    output head. Trained with the main loss (weight ``loss_weight / depth`` on the modules' summed losses per next-token target),
    used for speculative decoding after training, never in the main model's forward."""

    depth: int = 0
    """Extra tokens predicted (modules); 0: none. DeepSeek-V3: 1."""
    loss_weight: float = 0.3
    """lambda: the weight of the modules' mean loss in the training loss (DeepSeek-V3: 0.3 for the first 10T
    tokens, then 0.1). The logged training loss stays the main next-token loss; the MTP losses are logged apart."""

    def __post_init__(self) -> None:
        if self.depth < 0:
            raise ValueError(f"model.mtp.depth must be >= 0, got {self.depth}")
        if self.loss_weight < 0:
            raise ValueError(f"model.mtp.loss_weight must be >= 0, got {self.loss_weight}")
