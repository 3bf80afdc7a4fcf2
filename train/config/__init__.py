"""kfm.train.config: the typed configs of a training job, one module per concern.

``job`` (``PretrainJob``: everything together, and ``ProvenanceConfig``), ``trainer`` (``TrainerConfig`` and its
sub-configs: parallelism, checkpoint, stability, validation, metrics, profiler), ``optim``, ``cluster``,
``choices`` (the enums every string choice is) and ``peaks`` (accelerator peaks for MFU). Hydra registers
them with the other tools' schemas in one place, ``kfm.schemas``.
"""

from kfm.train.config.choices import ActivationCheckpointing, Backend, ParamDtype, Schedule, SpikeAction, WandbMode
from kfm.train.config.cluster import ClusterConfig
from kfm.train.config.job import PretrainJob, ProvenanceConfig
from kfm.train.config.optim import OptimConfig
from kfm.train.config.peaks import PEAK_FLOPS
from kfm.train.config.trainer import (
                                      CheckpointConfig,
                                      MetricsConfig,
                                      ParallelismConfig,
                                      ProfilerConfig,
                                      StabilityConfig,
                                      TrainerConfig,
                                      ValidationConfig,
)

__all__ = ["ActivationCheckpointing", "Backend", "CheckpointConfig", "ClusterConfig", "MetricsConfig", "OptimConfig",
           "PEAK_FLOPS", "ParallelismConfig", "ParamDtype", "PretrainJob", "ProfilerConfig", "ProvenanceConfig",
           "Schedule", "SpikeAction", "StabilityConfig", "TrainerConfig", "ValidationConfig", "WandbMode"]
