"""Import a Hugging Face checkpoint (a local directory) of a supported architecture into kfm.

    cfg, state_dict = load_hf_checkpoint("path/to/hf_dir")
    model = Transformer(cfg); model.load_state_dict(state_dict)

Supported: ``LlamaForCausalLM``, ``Qwen2ForCausalLM``, ``Qwen3ForCausalLM``, ``Exaone4ForCausalLM``
(``kfm.train.hf.convert.KEY_MAPS``), weights in safetensors (one file or sharded with an index). Nothing
is downloaded: the directory must hold ``config.json`` and the weights.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from kfm.model.config import ModelConfig, MTPConfig
from kfm.train.hf.convert import from_hf_config, from_hf_state_dict, from_hf_tensors, hf_architecture

INDEX = "model.safetensors.index.json"


def read_hf_weights(hf_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors files in ``hf_dir`` (sharded with an index, or one file)."""
    if (hf_dir / INDEX).is_file():
        files = sorted(set(json.loads((hf_dir / INDEX).read_text())["weight_map"].values()))
    elif (hf_dir / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        found = sorted(p.name for p in hf_dir.iterdir()) if hf_dir.is_dir() else []
        raise FileNotFoundError(f"{hf_dir} has no weights (model.safetensors or {INDEX}); found {found or 'nothing'}. "
                                "Point at a Hugging Face model directory saved with safe_serialization=True")
    sd: dict[str, torch.Tensor] = {}
    for name in files:
        sd.update(load_file(str(hf_dir / name)))
    return sd


def read_hf_config(hf_dir: str | Path) -> ModelConfig:
    """kfm's config for the Hugging Face model in ``hf_dir``."""
    from transformers import AutoConfig

    hf_dir = Path(hf_dir)
    if not (hf_dir / "config.json").is_file():
        raise FileNotFoundError(f"{hf_dir / 'config.json'} not found: point at a local Hugging Face model directory")
    hf_cfg = AutoConfig.from_pretrained(str(hf_dir), local_files_only=True)
    cfg = from_hf_config(hf_cfg)
    arch = hf_architecture(cfg)
    if arch != hf_cfg.architectures[0]:
        raise ValueError(f"{hf_dir}: a {hf_cfg.architectures[0]} whose settings only {arch} has; not imported")
    if cfg.mtp.depth:  # the config may promise modules (DeepseekV3Config's default is 1) that the files lack
        extra = {int(m.group(1)) for key in weight_keys(hf_dir) if (m := re.match(r"^model\.layers\.(\d+)\.", key))
                 and int(m.group(1)) >= cfg.n_layers}
        if extra != set(range(cfg.n_layers, cfg.n_layers + len(extra))):
            raise ValueError(f"{hf_dir}: multi-token prediction layers {sorted(extra)} do not follow the "
                             f"{cfg.n_layers} decoder layers in order")
        cfg.mtp = MTPConfig(depth=len(extra), loss_weight=cfg.mtp.loss_weight)
    return cfg


def weight_files(hf_dir: Path) -> list[str]:
    if (hf_dir / INDEX).is_file():
        return sorted(set(json.loads((hf_dir / INDEX).read_text())["weight_map"].values()))
    return ["model.safetensors"]


def weight_keys(hf_dir: Path) -> list[str]:
    """The tensor names of ``hf_dir``'s safetensors files, without reading the tensors."""
    from safetensors import safe_open

    keys = []
    for name in weight_files(hf_dir):
        with safe_open(str(hf_dir / name), "pt") as f:
            keys.extend(f.keys())
    return keys


def load_hf_checkpoint(hf_dir: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """kfm's config and state dict (fp32) for the Hugging Face model in ``hf_dir``."""
    cfg = read_hf_config(hf_dir)
    sd = {k: v.float() for k, v in from_hf_state_dict(read_hf_weights(Path(hf_dir)), cfg).items()}
    return cfg, sd


def import_details(hf_dir: str | Path, cfg: ModelConfig) -> dict:
    """What an ``import`` provenance record says of its source: the directory, the architecture, the config's hash."""
    hf_dir = Path(hf_dir)
    return {"source": str(hf_dir), "architecture": hf_architecture(cfg),
            "hf_config_sha256": hashlib.sha256((hf_dir / "config.json").read_bytes()).hexdigest()}


def hf_weight_tensors(hf_dir: str | Path, cfg: ModelConfig):
    """(kfm names, tensor) for each tensor of the safetensors files in ``hf_dir``, read one at a time."""
    from safetensors import safe_open

    hf_dir = Path(hf_dir)
    files = weight_files(hf_dir)

    def tensors():
        for name in files:
            with safe_open(str(hf_dir / name), "pt") as f:
                for key in f.keys():
                    yield key, f.get_tensor(key)

    yield from from_hf_tensors(tensors(), cfg)
