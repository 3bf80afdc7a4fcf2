"""Model configuration, validated on construction: ``ModelConfig`` is what the model *is* (what export, import,
FLOP and parameter accounting read), ``ModelRuntime`` how it *runs* (kernels, attention backend); the parts
(RoPE, mixture of experts, latent attention, multi-token prediction) have a module each, the string choices are
enums (``choices``)."""

from kfm.model.config.attention import LatentAttentionConfig
from kfm.model.config.choices import (AttentionBackend, ExpertGemm, Kernels, NormPlacement, RopeScaling, RouterScore,
                                      choice)
from kfm.model.config.model import ModelConfig, ModelRuntime
from kfm.model.config.moe import MoEConfig
from kfm.model.config.mtp import MTPConfig
from kfm.model.config.rope import RopeConfig

__all__ = ["AttentionBackend", "ExpertGemm", "Kernels", "LatentAttentionConfig", "MTPConfig", "ModelConfig",
           "ModelRuntime", "MoEConfig", "NormPlacement", "RopeConfig", "RopeScaling", "RouterScore", "choice"]
