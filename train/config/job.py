"""The pretraining job: model, data, optimizer, trainer, cluster and provenance configs together."""

from __future__ import annotations

from dataclasses import dataclass, field

from kfm.data_pipeline.config import LoaderConfig
from kfm.model.config import ModelConfig, ModelRuntime
from kfm.train.config.cluster import ClusterConfig
from kfm.train.config.optim import OptimConfig
from kfm.train.config.trainer import TrainerConfig


@dataclass
class ProvenanceConfig:
    """The provenance ledger (``kfm.train.provenance.ledger``): where every checkpoint's weights came from."""

    enabled: bool = True
    """Record the origin (init seed and digest, or the imported model), every checkpoint's weight digest,
    the data read and the code and config, chained by hash; exports carry the chain
    (``kfm.train.provenance.verify``)."""
    signing_key: str = ""
    """Ed25519 private key (PEM) that signs every record (``python -m kfm.train.cli.keygen``); empty: unsigned."""


@dataclass
class PretrainJob:
    """``python -m kfm.train.cli.pretrain``: the whole config of a training run, one typed sub-config per concern."""

    run_dir: str = "runs/demo"
    """Writes checkpoints, logs and wandb files under it; reads the shards from ``data_dir``."""
    data_dir: str = ""
    """Token shards to train on; empty: ``<run_dir>/data`` (sweep members share one)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """What the model is (``configs/model/``): what export, import and FLOP accounting read."""
    model_runtime: ModelRuntime = field(default_factory=ModelRuntime)
    """How the model runs: kernels and attention backend."""
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    """How the shards become training sequences: sequence length, mixture weights (``configs/loader/``)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    provenance: ProvenanceConfig = field(default_factory=ProvenanceConfig)

    def __post_init__(self) -> None:
        if self.loader.seq_len > self.model.max_seq_len:
            raise ValueError(
                f"loader.seq_len={self.loader.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}: "
                "lower one or raise the other"
            )
