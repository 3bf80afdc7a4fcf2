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


class ActivationCheckpointing(StrEnum):
    none = "none"
    full = "full"
    selective = "selective"


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


__all__ = ["ActivationCheckpointing", "Backend", "ParamDtype", "Schedule", "SpikeAction", "WandbMode", "choice"]
