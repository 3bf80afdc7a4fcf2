"""Start training from existing weights instead of a random init: a Hugging Face model directory,
optionally made deeper by depth up-scaling (SOLAR's recipe: Kim et al. 2023, "SOLAR 10.7B: Scaling
Large Language Models with Simple yet Effective Depth Up-Scaling" — a 32-layer base, layers 0-24 and
8-32 stacked into 48 layers, then continued pretraining).

``trainer.init_from=<hf dir>`` takes the model's architecture from that directory (the runtime,
``model_runtime.*``, is a config of its own and stays as configured; so does ``model.name``);
``trainer.init_layers="0-24,8-32"`` lists the half-open source layer ranges, in order, that make up the new model.
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from kfm.model.config import ModelConfig
from kfm.train.hf.convert import shortest_period
from kfm.train.hf.load import import_details, load_hf_checkpoint

log = logging.getLogger("kfm.train")
"""Model settings that choose how the model runs, not what it is: kept from the job's config."""


def parse_layer_ranges(spec: str, n_layers: int) -> list[int]:
    """``"0-24,8-32"`` → the source layer of every new layer: 0..23 then 8..31."""
    layers: list[int] = []
    for part in spec.split(","):
        try:
            lo, hi = (int(x) for x in part.strip().split("-"))
        except ValueError as err:
            raise ValueError(f"trainer.init_layers={spec!r}: each range is <first>-<end> (end excluded), "
                             "e.g. 0-24,8-32") from err
        if not 0 <= lo < hi <= n_layers:
            raise ValueError(f"trainer.init_layers={spec!r}: range {lo}-{hi} is outside the source's "
                             f"{n_layers} layers")
        layers.extend(range(lo, hi))
    return layers


def depth_upscale(cfg: ModelConfig, sd: dict[str, torch.Tensor],
                  layers: list[int]) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """A model whose layer ``j`` is a copy of source layer ``layers[j]``; everything else is shared."""
    out = {k: v for k, v in sd.items() if not k.startswith("layers.")}
    for new, src in enumerate(layers):
        prefix = f"layers.{src}."
        out.update({f"layers.{new}.{k[len(prefix):]}": v.clone() for k, v in sd.items() if k.startswith(prefix)})
    kinds = ["L" if cfg.is_local(src) else "G" for src in layers]
    return dataclasses.replace(cfg, n_layers=len(layers), layer_pattern=shortest_period(kinds)), out


def initial_weights(init_from: str, init_layers: str, model: ModelConfig,
                    observe=None) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The model config and full state dict to start from (``model`` keeps its ``name``).
    ``observe(kind, cfg, sd, **details)`` sees each stage (``import``, ``upscale``) for the provenance record."""
    cfg, sd = load_hf_checkpoint(init_from)
    if observe:
        observe("import", cfg, sd, **import_details(init_from, cfg))
    if init_layers:
        source_layers = cfg.n_layers
        cfg, sd = depth_upscale(cfg, sd, parse_layer_ranges(init_layers, source_layers))
        log.info("depth up-scaling %s: %d layers → %d (%s)", init_from, source_layers, cfg.n_layers, init_layers)
        if observe:
            observe("upscale", cfg, sd, layers=init_layers)
    cfg = dataclasses.replace(cfg, name=model.name)
    return cfg, sd
