"""FP8 training through torchao (``trainer.parallelism.fp8``), applied before any other parallelism.

- ``tensorwise``: torchao's ``Float8Linear`` with one dynamic scale per tensor; under FSDP2/HSDP the
  weights are all-gathered in FP8 (``enable_fsdp_float8_all_gather``, half the bytes of bf16) and the
  scales of all weights are computed in one pass after each optimizer step
  (``precompute_float8_dynamic_scale_for_fsdp``), as torchtitan does.
- ``rowwise``: ``Float8Linear`` with one scale per row (more accurate, slower; no FP8 all-gather).
- ``mxfp8``: torchao's MXFP8 training (a shared exponent per 32 values), which needs Blackwell tensor
  cores (compute capability 10.0: B200, GB200).

Only the linear layers inside the blocks are converted: the output head (its vocabulary dimension is
where low precision hurts the loss most, and torchtitan leaves it out too), the embedding, norms and
MoE experts' grouped weights stay in bf16, and so does any linear layer whose widths are not multiples
of 16 (FP8 GEMMs need that). ``fp8_emulate`` runs the same casts in high precision (torchao's emulation),
so the path is testable on machines without FP8 tensor cores; it is never faster.

Why torchao rather than kfm's own FP8 kernels or Transformer Engine: it is the library torchtitan uses for
the same recipes, it composes with FSDP2's FP8 all-gather and ``torch.compile``, and it installs as a wheel.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from torch import nn

from kfm.train.config.choices import Fp8Recipe

MIN_CAPABILITY = {Fp8Recipe.tensorwise: (8, 9), Fp8Recipe.rowwise: (8, 9), Fp8Recipe.mxfp8: (10, 0)}
GPUS = {(8, 9): "Ada or Hopper: L40S, H100, H200", (10, 0): "Blackwell: B200, GB200"}
SKIPPED = ("output",)
"""Linear layers kept in high precision, by module name."""


def fp8_device_error(recipe: Fp8Recipe, device: torch.device, capability: tuple[int, int] | None = None,
                     gpu_name: str = "") -> str | None:
    """Why ``recipe`` cannot run on ``device`` (``None``: it can). ``capability`` and ``gpu_name`` default to
    the device's own; tests pass them to check the messages for GPUs this machine lacks."""
    if recipe == Fp8Recipe.none:
        return None
    need = MIN_CAPABILITY[recipe]
    fix = "set trainer.parallelism.fp8=none, or trainer.parallelism.fp8_emulate=true to test the path (no speed-up)"
    if device.type != "cuda":
        return (f"trainer.parallelism.fp8={recipe.value} needs a CUDA GPU with FP8 tensor cores (compute capability "
                f"{need[0]}.{need[1]}+, {GPUS[need]}); this process runs on {device.type}: {fix}")
    if capability is None:
        capability = torch.cuda.get_device_capability(device)
        gpu_name = torch.cuda.get_device_name(device)
    if tuple(capability) < need:
        other = " (use tensorwise or rowwise on this GPU)" if recipe == Fp8Recipe.mxfp8 and tuple(capability) >= (8, 9) else ""
        return (f"trainer.parallelism.fp8={recipe.value} needs compute capability {need[0]}.{need[1]}+ "
                f"({GPUS[need]}); this GPU, {gpu_name or 'unnamed'}, is {capability[0]}.{capability[1]}{other}: {fix}")
    return None


def _torchao():
    try:
        import torchao  # noqa: F401
    except ImportError as err:
        raise ImportError("trainer.parallelism.fp8 needs torchao (pip install 'torchao>=0.18'; a dependency of kfm)") \
            from err


def fp8_filter(module: nn.Module, fqn: str, skip: tuple[str, ...] = SKIPPED) -> bool:
    """Whether the linear layer at ``fqn`` is converted: not named in ``skip``, widths multiples of 16."""
    if not isinstance(module, nn.Linear) or fqn.split(".")[-1] in skip:
        return False
    return module.in_features % 16 == 0 and module.out_features % 16 == 0


def convert_to_fp8(model: nn.Module, recipe: Fp8Recipe, *, fsdp_all_gather: bool = False,
                   emulate: bool = False, skip: tuple[str, ...] = SKIPPED) -> list[str]:
    """Swap ``model``'s eligible linear layers for torchao's FP8 training ones (works on the meta device);
    returns the converted module names. ``skip``: names of linear layers kept in high precision (kfm's head is
    ``output``; bench/gpu/step.py passes torchtitan's ``lm_head``)."""
    if recipe == Fp8Recipe.none:
        return []
    _torchao()
    keep = functools.partial(fp8_filter, skip=skip)
    names = [name for name, m in model.named_modules() if keep(m, name)]
    if recipe == Fp8Recipe.mxfp8:
        from torchao.prototype.moe_training.config import MXFP8TrainingOpConfig, MXFP8TrainingRecipe
        from torchao.quantization import quantize_

        name = MXFP8TrainingRecipe.MXFP8_EMULATED_RCEIL if emulate else MXFP8TrainingRecipe.MXFP8_RCEIL
        quantize_(model, MXFP8TrainingOpConfig.from_recipe(name), filter_fn=keep)
        return names
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    config = Float8LinearConfig.from_recipe_name(recipe.value)
    config = dataclasses.replace(config, emulate=emulate,
                                 enable_fsdp_float8_all_gather=fsdp_all_gather and recipe == Fp8Recipe.tensorwise)
    convert_to_float8_training(model, module_filter_fn=keep, config=config)
    return names


def uses_fp8_all_gather(model: nn.Module) -> bool:
    return any(getattr(getattr(m, "config", None), "enable_fsdp_float8_all_gather", False) for m in model.modules())


def after_optimizer_step(model: nn.Module) -> None:
    """With FP8 all-gather: every weight's scale in one pass (one all-reduce), not one per weight per
    all-gather."""
    from torchao.float8 import precompute_float8_dynamic_scale_for_fsdp

    precompute_float8_dynamic_scale_for_fsdp(model)
