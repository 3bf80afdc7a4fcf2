"""The trainer's config (``trainer.*``): the run's length and batch, and one sub-config per concern, each handed
only to the code that needs it (``parallelize(model, trainer.parallelism, mesh)``, the checkpoint manager gets
``trainer.checkpoint``, and so on)."""

from __future__ import annotations

from dataclasses import dataclass, field

from kfm.train.config.choices import (ActivationCheckpointing, Backend, Fp8Recipe, ParamDtype, PipelineSchedule,
                                      SpikeAction, WandbMode, choice)
from kfm.train.config.peaks import PEAK_FLOPS, is_positive_number


@dataclass
class ParallelismConfig:
    """``trainer.parallelism``: how the model is spread over the ranks, and what is applied to it first."""

    backend: Backend = Backend.fsdp2
    """``fsdp2`` (sharded), ``hsdp`` (sharded within groups, replicated across them), ``ddp``, or ``deepspeed``
    (ZeRO stage ``zero_stage``; its JSON config is generated from this config)."""
    zero_stage: int = 3
    """``deepspeed``: ZeRO stage 1 (optimizer state sharded), 2 (+ gradients) or 3 (+ parameters)."""
    hsdp_replicas: int = 0
    """``hsdp``: replica groups (0: one per node, from ``LOCAL_WORLD_SIZE``)."""
    param_dtype: ParamDtype = ParamDtype.fp32
    """Compute dtype of the parameters: ``fp32`` or ``bf16`` (FSDP2: gradients reduce in fp32; DeepSpeed:
    bf16 weights with fp32 master weights in the optimizer)."""
    fp8: Fp8Recipe = Fp8Recipe.none
    """FP8 training of the blocks' linear layers through torchao (``kfm.train.parallel.fp8``): ``none``,
    ``tensorwise`` (with FP8 all-gather under FSDP2/HSDP), ``rowwise`` (compute capability 8.9+: H100, H200) or
    ``mxfp8`` (10.0+: B200). A GPU without the tensor cores for the recipe is refused with the reason."""
    fp8_emulate: bool = False
    """Run the FP8 recipe's casts in high precision (torchao's emulation) on any device: for tests, never faster."""
    cpu_offload: bool = False
    """FSDP2/HSDP: keep sharded parameters, gradients and optimizer state in CPU memory."""
    activation_checkpointing: ActivationCheckpointing = ActivationCheckpointing.none
    """Recompute activations in the backward: ``none``, ``full`` (every block) or ``selective`` (every
    ``ac_every``-th)."""
    ac_every: int = 2
    """``selective``: checkpoint one block in this many."""
    compile: bool = False
    """``torch.compile`` each block."""
    tp: int = 1
    """Tensor-parallel degree: the ranks that hold one model replica together (attention heads and the
    feed-forward width split over them, Megatron-LM's column/row plan); the rest of the ranks are data parallel.
    Must divide the world size, the heads and the feed-forward width (``kfm.train.parallel.layout``)."""
    ep: int = 1
    """Expert-parallel degree: each MoE layer's routed experts split over this many data-parallel ranks, tokens
    sent to their experts' ranks by all-to-all (``kfm.train.parallel.expert_parallel``). Must divide the
    data-parallel ranks and the number of experts; FSDP2 shards the expert weights over the remaining
    data-parallel ranks."""
    pp: int = 1
    """Pipeline-parallel degree: the layers split into ``pp`` x ``pp_stages_per_rank`` consecutive stages of equal
    depth (the first also holds the embedding, the last the final norm, output projection and loss), one group of
    ranks each; the step's micro batches (``global_batch_size`` / (``local_batch_size`` x data-parallel ranks))
    flow through them by ``pp_schedule`` (``kfm.train.parallel.pipeline``)."""
    pp_schedule: str = "1f1b"
    """``gpipe``, ``1f1b`` (one stage a rank), ``interleaved_1f1b`` or ``interleaved_zb`` (several stages a rank,
    assigned round-robin: rank r holds stages r, r + pp, ...)."""
    pp_stages_per_rank: int = 1
    """Stages each pipeline rank holds (virtual stages; 2 or more for the interleaved schedules)."""
    cp: int = 1
    """Context-parallel degree: each sequence split over this many ranks (load-balanced chunks), attention over
    the keys and values gathered from them (``kfm.train.parallel.context_parallel``); the sequence length must be
    divisible by 2 x cp. FSDP2 shards over the data-parallel and context-parallel ranks together."""
    sequence_parallel: bool = False
    """With ``tp`` > 1: the residual stream between the sublayers (norms, residual adds, dropout-free) sharded
    over the ``tp`` ranks by sequence position (Megatron-LM's sequence parallelism): activation memory there drops
    ``tp``-fold; each sublayer's all-reduce becomes an all-gather before it and a reduce-scatter after it (the same
    bytes). Needs the sequence length divisible by ``tp``."""

    def __post_init__(self) -> None:
        self.backend = choice(Backend, self.backend, "trainer.parallelism.backend")
        self.param_dtype = choice(ParamDtype, self.param_dtype, "trainer.parallelism.param_dtype")
        self.fp8 = choice(Fp8Recipe, self.fp8, "trainer.parallelism.fp8")
        if self.fp8 != Fp8Recipe.none and self.backend == Backend.deepspeed:
            raise ValueError(f"trainer.parallelism.fp8={self.fp8.value} runs through torchao, which DeepSpeed's engine "
                             "does not drive: use backend fsdp2, hsdp or ddp, or fp8=none")
        if self.fp8 != Fp8Recipe.none and self.tp > 1:
            raise ValueError(f"trainer.parallelism.fp8={self.fp8.value} with tp={self.tp}: FP8 tensor parallelism "
                             "(torchao's Float8 parallel styles) is not wired yet: use tp=1 or fp8=none")
        if self.fp8_emulate and self.fp8 == Fp8Recipe.none:
            raise ValueError("trainer.parallelism.fp8_emulate=true emulates an FP8 recipe: set trainer.parallelism.fp8")
        self.activation_checkpointing = choice(ActivationCheckpointing, self.activation_checkpointing,
                                               "trainer.parallelism.activation_checkpointing")
        if self.ac_every < 1 or self.hsdp_replicas < 0:
            raise ValueError("trainer.parallelism.ac_every must be >= 1 and hsdp_replicas >= 0")
        if min(self.tp, self.ep, self.pp, self.pp_stages_per_rank, self.cp) < 1:
            raise ValueError(f"trainer.parallelism.tp, ep, pp, pp_stages_per_rank and cp must be >= 1, got tp={self.tp}, "
                             f"ep={self.ep}, pp={self.pp}, pp_stages_per_rank={self.pp_stages_per_rank}, cp={self.cp}")
        self.pp_schedule = choice(PipelineSchedule, self.pp_schedule, "trainer.parallelism.pp_schedule")
        interleaved = self.pp_schedule.startswith("interleaved")
        if interleaved != (self.pp_stages_per_rank > 1):
            raise ValueError(f"trainer.parallelism.pp_schedule={self.pp_schedule.value} with pp_stages_per_rank="
                             f"{self.pp_stages_per_rank}: the interleaved schedules need 2 or more stages a rank, "
                             "gpipe and 1f1b exactly 1")
        if self.sequence_parallel and self.tp == 1:
            raise ValueError("trainer.parallelism.sequence_parallel=true shards the sequence over the tensor-parallel "
                             "ranks: set trainer.parallelism.tp > 1 too")
        if self.zero_stage not in (1, 2, 3):
            raise ValueError(f"trainer.parallelism.zero_stage must be 1, 2 or 3, got {self.zero_stage}")
        if self.cpu_offload and self.backend not in (Backend.fsdp2, Backend.hsdp):
            raise ValueError("trainer.parallelism.cpu_offload needs backend fsdp2 or hsdp")


@dataclass
class CheckpointConfig:
    """``trainer.checkpoint``: cadence, retention and resume (``kfm.train.checkpoint.manager``)."""

    every: int = 100
    """Steps between checkpoints (and one at the end)."""
    keep: int = 2
    """Newest checkpoints kept on disk."""
    resume: str = "auto"
    """``auto``: continue from the newest complete checkpoint in ``<run_dir>/checkpoints`` if there is one;
    ``never``: start from step 0 (existing checkpoints are overwritten as the run reaches their steps);
    or the path of a checkpoint directory to continue from."""
    async_save: bool = False
    """FSDP2/HSDP/DDP: write checkpoints in a background thread (``dcp.async_save``) while training goes on;
    each is published once complete, before the next one starts."""

    def __post_init__(self) -> None:
        if self.every <= 0 or self.keep <= 0:
            raise ValueError(f"trainer.checkpoint.every and keep must be positive, got {self.every}, {self.keep}")
        if not self.resume or self.resume.lower() in ("true", "false", "none"):
            raise ValueError(f"trainer.checkpoint.resume must be auto, never or a checkpoint directory, got "
                             f"{self.resume!r}")


@dataclass
class StabilityConfig:
    """``trainer.stability``: what a non-finite step or a loss spike does (``kfm.train.loop.stability``)."""

    skip_nonfinite: bool = True
    """A step whose loss or gradient norm is not finite is skipped (no update) and counted; false: stop."""
    spike_sigmas: float = 0.0
    """Loss-spike detection: a loss above the mean of the last ``spike_window`` steps by this many
    standard deviations is a spike (0: off)."""
    spike_window: int = 50
    """Steps in the running window of the spike detector."""
    spike_action: SpikeAction = SpikeAction.skip
    """On a spike: ``skip`` the update (counted), ``stop`` the run with an error, or ``rollback``: skip, and
    after ``spike_rollback_after`` spikes in a row restore weights and optimizer from the newest checkpoint
    (the data position goes on, so the batches behind the spikes are not replayed)."""
    spike_rollback_after: int = 3
    """``rollback``: consecutive spikes that trigger a rollback."""

    def __post_init__(self) -> None:
        self.spike_action = choice(SpikeAction, self.spike_action, "trainer.stability.spike_action")
        if self.spike_sigmas < 0 or self.spike_window < 2 or self.spike_rollback_after < 1:
            raise ValueError("trainer.stability.spike_sigmas must be >= 0, spike_window >= 2 and "
                             "spike_rollback_after >= 1")


@dataclass
class ValidationConfig:
    """``trainer.validation``: held-out loss and bits per byte (``kfm.train.loop.validation``)."""

    every: int = 100
    """Steps between validation passes (and one at the end)."""
    batches: int = 8
    """Global batches of each source's held-out text per pass (``val_loss`` weights the sources by their
    held-out tokens)."""
    per_source: bool = True
    """Also log validation loss and bits per byte per data source (``val_loss/ko``, ``val_bpb/code``); they are
    measured either way, for the headline."""

    def __post_init__(self) -> None:
        if self.every <= 0 or self.batches <= 0:
            raise ValueError(f"trainer.validation.every and batches must be positive, got {self.every}, "
                             f"{self.batches}")


@dataclass
class MetricsConfig:
    """``trainer.metrics``: what is logged, how often, and where (``kfm.train.loop.metrics``)."""

    log_every: int = 10
    """Steps between training-loss log lines."""
    device_peak: str = "auto"
    """Peak used for MFU: a key of ``PEAK_FLOPS``, a number in TFLOP/s (dense bf16 of your device), or ``auto``
    (the CUDA device's name looked up in ``PEAK_FLOPS``, refused for a GPU not there; ``cpu``'s nominal without)."""
    wandb_mode: WandbMode = WandbMode.offline
    """``offline``, ``online`` or ``disabled``."""
    wandb_project: str = "kfm"
    wandb_group: str = ""
    """wandb group of the run (a sweep puts its members in one group); empty: none."""
    moe_collapse_ratio: float = 4.0
    """MoE models: warn when a layer's max/mean expert load over a logging window exceeds this."""

    def __post_init__(self) -> None:
        self.wandb_mode = choice(WandbMode, self.wandb_mode, "trainer.metrics.wandb_mode")
        if self.log_every <= 0:
            raise ValueError(f"trainer.metrics.log_every must be positive, got {self.log_every}")
        if self.moe_collapse_ratio <= 1:
            raise ValueError(f"trainer.metrics.moe_collapse_ratio must be above 1, got {self.moe_collapse_ratio}")
        if self.device_peak != "auto" and self.device_peak not in PEAK_FLOPS and not is_positive_number(
                self.device_peak):
            raise ValueError(f"trainer.metrics.device_peak must be auto, a peak in TFLOP/s (e.g. 400) or one of "
                             f"{sorted(PEAK_FLOPS)}, got {self.device_peak!r}")


@dataclass
class ProfilerConfig:
    """``trainer.profiler``: a ``torch.profiler`` trace of a few steps (into ``<run_dir>/profile/``)."""

    start: int = 0
    """First step profiled."""
    steps: int = 0
    """Steps to profile (0: off)."""

    def __post_init__(self) -> None:
        if self.start < 0 or self.steps < 0:
            raise ValueError("trainer.profiler.start and steps must be >= 0")


@dataclass
class TrainerConfig:
    """Length of the run and its batch; the rest by concern, in the sub-configs."""

    steps: int = 300
    """Optimizer steps to train for."""
    local_batch_size: int = 4
    """Sequences per rank per forward/backward (micro batch)."""
    global_batch_size: int = 0
    """Sequences per optimizer step over all ranks; a multiple of ``local_batch_size`` x ranks, the
    quotient being the gradient-accumulation steps. 0: ``local_batch_size`` x ranks (no accumulation)."""
    seed: int = 0
    """Seed of the weight init and the data order."""
    document_masking: bool = True
    """Packed documents attend only within themselves and restart their RoPE positions (false: a
    packed sequence is one stream, as at inference on a single document)."""
    z_loss: float = 0.0
    """Weight of the z-loss (mean squared log-normaliser of the softmax); PaLM used 1e-4."""
    init_from: str = ""
    """A local Hugging Face model directory (Llama, Qwen2, Qwen3, EXAONE 4) to start from instead of a
    random init; the architecture is taken from it (the model runtime, ``model_runtime.*``, stays)."""
    init_layers: str = ""
    """With ``init_from``: depth up-scaling, the source layer ranges stacked in order, e.g. ``0-24,8-32``."""
    parallelism: ParallelismConfig = field(default_factory=ParallelismConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    stability: StabilityConfig = field(default_factory=StabilityConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    profiler: ProfilerConfig = field(default_factory=ProfilerConfig)

    def __post_init__(self) -> None:
        for key in ("steps", "local_batch_size"):
            if getattr(self, key) <= 0:
                raise ValueError(f"trainer.{key} must be positive, got {getattr(self, key)}")
        if self.global_batch_size < 0 or self.global_batch_size % self.local_batch_size:
            raise ValueError(f"trainer.global_batch_size={self.global_batch_size} must be a multiple of "
                             f"trainer.local_batch_size={self.local_batch_size} (or 0)")
        if self.init_layers and not self.init_from:
            raise ValueError("trainer.init_layers needs trainer.init_from (the model whose layers are stacked)")
        if self.checkpoint.async_save and self.parallelism.backend == Backend.deepspeed:
            raise ValueError("trainer.checkpoint.async_save is for fsdp2, hsdp and ddp; DeepSpeed saves synchronously")
