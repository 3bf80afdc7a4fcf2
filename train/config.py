"""Optimizer and trainer configuration, and the pretraining job that ties the groups together."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from kfm.data_pipeline.config import DataConfig
from kfm.model.config import ModelConfig

SCHEDULES = ("cosine", "wsd", "constant")
BACKENDS = ("fsdp2", "hsdp", "ddp", "deepspeed")
PEAK_FLOPS = {
    # Dense bf16 tensor-core peak per device, FLOP/s, without sparsity, from the vendors' datasheets:
    # NVIDIA A100 datasheet 312 TFLOP/s; L4 121, L40 181 and L40S 362 (half of 242 / 362 / 733 with sparsity);
    # H100 datasheet SXM 989, PCIe 756, NVL 835 (half of 1,979 / 1,513 / 1,671); H200 SXM 989; H20 148;
    # HGX B200 2,250 per GPU (4.5 PFLOP/s with sparsity); GB200 NVL72 2,500 per GPU (360 PFLOP/s sparse over 72). AMD Instinct
    # datasheets: MI300X and MI325X 1,307 TFLOP/s, MI250X 383.
    "a100": 312e12,
    "l4": 121e12,
    "l40s": 362e12,
    "l40": 181e12,
    "h100_sxm": 989e12,
    "h100_pcie": 756e12,
    "h100_nvl": 835e12,
    "h200": 989e12,
    "h20": 148e12,
    "b200": 2250e12,
    "gb200": 2500e12,
    "mi300x": 1307e12,
    "mi325x": 1307e12,
    "mi250x": 383e12,
    # A nominal figure so that MFU arithmetic runs (and is tested) on CPU; not a measured peak.
    "cpu": 1e12,
}


def _is_positive_number(text: str) -> bool:
    """A finite number above zero (``inf`` and ``nan`` are not peaks)."""
    try:
        return math.isfinite(float(text)) and float(text) > 0
    except ValueError:
        return False


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
    schedule: str = "cosine"
    """After warmup: ``cosine`` decay to ``lr * min_lr_ratio``; ``wsd`` holds ``lr`` then decays linearly
    over the last ``decay_fraction`` of the steps (warmup-stable-decay, as in MiniCPM); ``constant``."""
    decay_fraction: float = 0.2
    """``wsd``: share of all steps spent in the final decay."""

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not 0 < self.decay_fraction <= 1:
            raise ValueError(f"optim.decay_fraction must be in (0, 1], got {self.decay_fraction}")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1 or self.warmup_steps < 0:
            raise ValueError("optim.lr must be > 0, optim.min_lr_ratio in [0, 1], optim.warmup_steps >= 0")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1) or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("optim betas must be in [0, 1); weight_decay and grad_clip must be >= 0")


@dataclass
class TrainerConfig:
    """Length of the run, batch, cadence of logging, validation and checkpoints."""

    steps: int = 300
    """Optimizer steps to train for."""
    local_batch_size: int = 4
    """Sequences per rank per forward/backward (micro batch)."""
    global_batch_size: int = 0
    """Sequences per optimizer step over all ranks; a multiple of ``local_batch_size`` x ranks, the
    quotient being the gradient-accumulation steps. 0: ``local_batch_size`` x ranks (no accumulation)."""
    seed: int = 0
    """Seed of the weight init and the data order."""
    backend: str = "fsdp2"
    """Data parallelism: ``fsdp2`` (sharded), ``hsdp`` (sharded within groups, replicated across them), ``ddp``,
    or ``deepspeed`` (ZeRO stage ``zero_stage``; its JSON config is generated from this config)."""
    zero_stage: int = 3
    """``deepspeed``: ZeRO stage 1 (optimizer state sharded), 2 (+ gradients) or 3 (+ parameters)."""
    hsdp_replicas: int = 0
    """``hsdp``: replica groups (0: one per node, from ``LOCAL_WORLD_SIZE``)."""
    param_dtype: str = "fp32"
    """Compute dtype of the parameters: ``fp32`` or ``bf16`` (FSDP2: gradients reduce in fp32; DeepSpeed:
    bf16 weights with fp32 master weights in the optimizer)."""
    cpu_offload: bool = False
    """FSDP2/HSDP: keep sharded parameters, gradients and optimizer state in CPU memory."""
    activation_checkpointing: str = "none"
    """Recompute activations in the backward: ``none``, ``full`` (every block) or ``selective`` (every ``ac_every``-th)."""
    ac_every: int = 2
    """``selective``: checkpoint one block in this many."""
    compile: bool = False
    """``torch.compile`` each block."""
    document_masking: bool = True
    """Packed documents attend only within themselves and restart their RoPE positions (false: a
    packed sequence is one stream, as at inference on a single document)."""
    z_loss: float = 0.0
    """Weight of the z-loss (mean squared log-normaliser of the softmax); PaLM used 1e-4."""
    skip_nonfinite: bool = True
    """A step whose loss or gradient norm is not finite is skipped (no update) and counted; false: stop."""
    spike_sigmas: float = 0.0
    """Loss-spike detection: a loss above the mean of the last ``spike_window`` steps by this many
    standard deviations is a spike (0: off)."""
    spike_window: int = 50
    """Steps in the running window of the spike detector."""
    spike_action: str = "skip"
    """On a spike: ``skip`` the update (counted), ``stop`` the run with an error, or ``rollback``: skip, and
    after ``spike_rollback_after`` spikes in a row restore weights and optimizer from the newest checkpoint
    (the data position goes on, so the batches behind the spikes are not replayed)."""
    spike_rollback_after: int = 3
    """``rollback``: consecutive spikes that trigger a rollback."""
    device_peak: str = "auto"
    """Peak used for MFU: a key of ``PEAK_FLOPS``, a number in TFLOP/s (dense bf16 of your device), or ``auto``
    (the CUDA device's name looked up in ``PEAK_FLOPS``, refused for a GPU not there; ``cpu``'s nominal without)."""
    log_every: int = 10
    """Steps between training-loss log lines."""
    val_every: int = 100
    """Steps between validation passes (and one at the end)."""
    val_batches: int = 8
    """Global batches of each source's held-out text per validation pass (``val_loss`` weights the sources by
    their held-out tokens, ``train/loop/validation.py``)."""
    val_per_source: bool = True
    """Also log validation loss and bits per byte per data source (``val_loss/ko``, ``val_bpb/code``); they are
    measured either way, for the headline."""
    checkpoint_every: int = 100
    """Steps between checkpoints (and one at the end)."""
    keep_checkpoints: int = 2
    """Newest checkpoints kept on disk."""
    resume: str = "auto"
    """``auto``: continue from the newest complete checkpoint in ``<run_dir>/checkpoints`` if there is one;
    ``never``: start from step 0 (existing checkpoints are overwritten as the run reaches their steps);
    or the path of a checkpoint directory to continue from."""
    async_checkpoint: bool = False
    """FSDP2/HSDP/DDP: write checkpoints in a background thread (``dcp.async_save``) while training goes on;
    each is published once complete, before the next one starts."""
    init_from: str = ""
    """A local Hugging Face model directory (Llama, Qwen2, Qwen3, EXAONE 4) to start from instead of a
    random init; the model config is taken from it (``model.kernels``/``attention_backend`` stay)."""
    init_layers: str = ""
    """With ``init_from``: depth up-scaling, the source layer ranges stacked in order, e.g. ``0-24,8-32``."""
    profile_start: int = 0
    """First step profiled with ``torch.profiler`` (traces in ``<run_dir>/profile/``)."""
    profile_steps: int = 0
    """Steps to profile (0: off)."""
    wandb_mode: str = "offline"
    """``offline``, ``online`` or ``disabled``."""
    wandb_project: str = "kfm"
    wandb_group: str = ""
    """wandb group of the run (a sweep puts its members in one group); empty: none."""

    def __post_init__(self) -> None:
        positive = ("steps", "local_batch_size", "log_every", "val_every", "val_batches", "checkpoint_every",
                    "keep_checkpoints")
        for key in positive:
            if getattr(self, key) <= 0:
                raise ValueError(f"trainer.{key} must be positive, got {getattr(self, key)}")
        if self.global_batch_size < 0 or self.global_batch_size % self.local_batch_size:
            raise ValueError(f"trainer.global_batch_size={self.global_batch_size} must be a multiple of "
                             f"trainer.local_batch_size={self.local_batch_size} (or 0)")
        if self.spike_sigmas < 0 or self.spike_window < 2 or self.spike_action not in ("skip", "stop", "rollback"):
            raise ValueError("trainer.spike_sigmas must be >= 0, spike_window >= 2, spike_action skip, stop or rollback")
        if self.spike_rollback_after < 1 or self.profile_start < 0 or self.profile_steps < 0:
            raise ValueError("trainer.spike_rollback_after must be >= 1; profile_start and profile_steps >= 0")
        if self.device_peak != "auto" and self.device_peak not in PEAK_FLOPS and not _is_positive_number(
                self.device_peak):
            raise ValueError(f"trainer.device_peak must be auto, a peak in TFLOP/s (e.g. 400) or one of "
                             f"{sorted(PEAK_FLOPS)}, got {self.device_peak!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"trainer.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.activation_checkpointing not in ("none", "full", "selective") or self.ac_every < 1:
            raise ValueError("trainer.activation_checkpointing must be none, full or selective; trainer.ac_every >= 1")
        if self.hsdp_replicas < 0 or (self.cpu_offload and self.backend not in ("fsdp2", "hsdp")):
            raise ValueError("trainer.hsdp_replicas must be >= 0; trainer.cpu_offload needs fsdp2 or hsdp")
        if self.init_layers and not self.init_from:
            raise ValueError("trainer.init_layers needs trainer.init_from (the model whose layers are stacked)")
        if self.zero_stage not in (1, 2, 3):
            raise ValueError(f"trainer.zero_stage must be 1, 2 or 3, got {self.zero_stage}")
        if self.async_checkpoint and self.backend == "deepspeed":
            raise ValueError("trainer.async_checkpoint is for fsdp2, hsdp and ddp; DeepSpeed saves synchronously")
        if not self.resume or self.resume.lower() in ("true", "false", "none"):
            raise ValueError(f"trainer.resume must be auto, never or a checkpoint directory, got {self.resume!r}")
        if self.param_dtype not in ("fp32", "bf16"):
            raise ValueError(f"trainer.param_dtype must be 'fp32' or 'bf16', got {self.param_dtype!r}")
        if self.wandb_mode not in ("offline", "online", "disabled"):
            raise ValueError(f"trainer.wandb_mode must be offline, online or disabled, got {self.wandb_mode!r}")


@dataclass
class ClusterConfig:
    """Where the job runs; read by ``python -m kfm.train.cli.launch`` in ``scripts/slurm/pretrain.sbatch``."""

    name: str = "local_cpu"
    gpus_per_node: int = 0
    """GPUs per node the job uses; 0: CPU processes (gloo)."""
    procs_per_node: int = 0
    """Training processes per node; 0: one per GPU, or 1 without GPUs."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment of the training processes (NCCL / InfiniBand settings); a variable already set wins."""

    def __post_init__(self) -> None:
        if self.gpus_per_node < 0 or self.procs_per_node < 0:
            raise ValueError("cluster.gpus_per_node and cluster.procs_per_node must be >= 0")
        if self.gpus_per_node and self.procs_per_node > self.gpus_per_node:
            raise ValueError(f"cluster.procs_per_node={self.procs_per_node} exceeds cluster.gpus_per_node="
                             f"{self.gpus_per_node}: one process per GPU at most")

    @property
    def nproc_per_node(self) -> int:
        return self.procs_per_node or self.gpus_per_node or 1


@dataclass
class ProvenanceConfig:
    """The provenance ledger (``kfm.train.provenance.ledger``): where every checkpoint's weights came from."""

    enabled: bool = True
    """Record the origin (init seed and digest, or the imported model), every checkpoint's weight digest,
    the data read and the code and config, chained by hash; exports carry the chain (``kfm.train.provenance.verify``)."""
    signing_key: str = ""
    """Ed25519 private key (PEM) that signs every record (``python -m kfm.train.cli.keygen``); empty: unsigned."""


@dataclass
class PretrainJob:
    """``python -m kfm.train.cli.pretrain``."""

    run_dir: str = "runs/demo"
    """Writes checkpoints, logs and wandb files under it; reads the shards from ``data_dir``."""
    data_dir: str = ""
    """Token shards to train on; empty: ``<run_dir>/data`` (sweep members share one)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    provenance: ProvenanceConfig = field(default_factory=ProvenanceConfig)

    def __post_init__(self) -> None:
        if self.data.seq_len > self.model.max_seq_len:
            raise ValueError(
                f"data.seq_len={self.data.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}: "
                "lower one or raise the other"
            )
