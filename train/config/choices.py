"""The string choices of the training configs, as enums: Hydra refuses a value outside them when the config is
composed (``trainer.parallelism.backend=fsdp3`` fails naming ``fsdp2, hsdp, ddp, deepspeed``).

Members are named by their values (lower case), because OmegaConf matches an override against member names.
They are ``StrEnum``s, so a member equals its string (``Backend.ddp == "ddp"``) and serialises as one.
"""

from __future__ import annotations

from enum import StrEnum


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


def choice(enum: type[StrEnum], value, key: str):
    """``value`` as a member of ``enum`` (configs built in Python pass plain strings); a value outside it is a
    ``ValueError`` naming ``key`` and the allowed values."""
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(m.value for m in enum)
        raise ValueError(f"{key} must be one of {allowed}, got {value!r}") from None
