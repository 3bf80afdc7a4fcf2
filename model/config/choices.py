"""The string choices of the model's configs, as enums, and ``choice`` that reads them with a clear error."""

from __future__ import annotations

from enum import StrEnum


def choice(enum: type[StrEnum], value, key: str):
    """``value`` as a member of ``enum`` (configs built in Python or read from JSON hold plain strings); a value
    outside it is a ``ValueError`` naming ``key`` and the allowed values. (Hydra refuses such a value earlier, when
    the config is composed: OmegaConf matches member names, which are the values here.)"""
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(m.value for m in enum)
        raise ValueError(f"{key} must be one of {allowed}, got {value!r}") from None


class RopeScaling(StrEnum):
    none = "none"
    linear = "linear"
    llama3 = "llama3"
    yarn = "yarn"


class NormPlacement(StrEnum):
    pre = "pre"
    post = "post"


class Kernels(StrEnum):
    auto = "auto"
    triton = "triton"
    torch = "torch"


class RouterScore(StrEnum):
    softmax = "softmax"
    sigmoid = "sigmoid"


class ExpertGemm(StrEnum):
    auto = "auto"
    grouped_mm = "grouped_mm"
    triton = "triton"
    loop = "loop"


class AttentionBackend(StrEnum):
    auto = "auto"
    flash_attn = "flash_attn"
    triton = "triton"
    flex = "flex"
    sdpa = "sdpa"

