"""The string choices of the training configs, as enums: Hydra refuses a value outside them when the config is
composed (``trainer.parallelism.backend=fsdp3`` fails naming ``fsdp2, hsdp, ddp, deepspeed``).

Members are named by their values (lower case), because OmegaConf matches an override against member names.
They are ``StrEnum``s, so a member equals its string (``Backend.ddp == "ddp"``) and serialises as one.
"""

from __future__ import annotations

from enum import StrEnum

from kfm.model.config import choice


class Backend(StrEnum):
    """Data parallelism: sharded, sharded within groups and replicated across them, replicated, or DeepSpeed."""

    fsdp2 = "fsdp2"
    hsdp = "hsdp"
    ddp = "ddp"
    deepspeed = "deepspeed"


class ParamDtype(StrEnum):
    fp32 = "fp32"
    bf16 = "bf16"


class Fp8Recipe(StrEnum):
    """torchao FP8 training recipes (``kfm.train.parallel.fp8``)."""

    none = "none"
    tensorwise = "tensorwise"
    rowwise = "rowwise"
    mxfp8 = "mxfp8"


class ActivationCheckpointing(StrEnum):
    none = "none"
    full = "full"
    selective = "selective"


class PipelineSchedule(StrEnum):
    """``torch.distributed.pipelining`` schedules: one stage a rank (``gpipe``, ``1f1b``) or several
    (``interleaved_1f1b``, ``interleaved_zb``: zero-bubble, the weight gradients deferred into the bubbles)."""

    gpipe = "gpipe"
    one_f1b = "1f1b"
    interleaved_1f1b = "interleaved_1f1b"
    interleaved_zb = "interleaved_zb"


class SpikeAction(StrEnum):
    skip = "skip"
    stop = "stop"
    rollback = "rollback"


class WandbMode(StrEnum):
    offline = "offline"
    online = "online"
    disabled = "disabled"


class Schedule(StrEnum):
    cosine = "cosine"
    wsd = "wsd"
    constant = "constant"


__all__ = ["ActivationCheckpointing", "Backend", "Fp8Recipe", "ParamDtype", "PipelineSchedule", "Schedule", "SpikeAction", "WandbMode", "choice"]
