"""kfm.model: the decoder-only transformer, as plain ``nn.Module``s.

Nothing here knows about distributed training, the trainer or the data pipeline;
``train/`` applies parallelism from outside.
"""

from kfm.model.config import ModelConfig
from kfm.model.transformer import Transformer

__all__ = ["ModelConfig", "Transformer"]
