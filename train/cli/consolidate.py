"""Consolidate a sharded checkpoint into one safetensors state dict (for export, sharing or inspection).

    python -m kfm.train.cli.consolidate [run_dir=runs/demo] [checkpoint=<dir>] [out=<checkpoint>/model.safetensors]

Works for a checkpoint written by any backend and world size, in one process on CPU. Keys are
kfm's parameter names; a tied output projection is stored once (as ``tok_embeddings.weight``);
the metadata holds the step and the model config.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from kfm.model import ModelConfig, Transformer
from kfm.schemas import register_schemas
from kfm.train.checkpoint.layout import read_state, resolve_checkpoint
from kfm.train.checkpoint.reader import load_model_weights
from kfm.train.cli import CONFIG_DIR
from kfm.train.provenance.ledger import read_chain

log = logging.getLogger(__name__)


def consolidate(ckpt: Path, out: Path) -> Path:
    state = read_state(ckpt)
    cfg = ModelConfig.from_dict(state["config"]["model"])
    with torch.device("meta"):
        model = Transformer(cfg)
    model.to_empty(device="cpu")
    load_model_weights(ckpt, model)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if cfg.tie_embeddings:
        del sd["output.weight"]  # the same tensor as tok_embeddings.weight
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"step": str(state["step"]), "model_config": json.dumps(cfg.to_dict())}
    chain = read_chain(ckpt)
    if chain:  # the checkpoint's provenance goes along, so an export of this file can be verified
        meta["provenance_chain"] = "\n".join(json.dumps(env, ensure_ascii=False) for env in chain)
    save_file(sd, str(out), metadata=meta)
    log.info("consolidated %s (step %d, %d tensors) into %s", ckpt, state["step"], len(sd), out)
    return out


@dataclass
class ConsolidateJob:
    """``python -m kfm.train.cli.consolidate``."""

    run_dir: str = "runs/demo"
    checkpoint: str = ""
    """Checkpoint directory; empty means the newest one under ``<run_dir>/checkpoints``."""
    out: str = ""
    """Output file; empty means ``<checkpoint>/model.safetensors``."""


register_schemas("consolidate_job_schema")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="consolidate")
def main(cfg) -> None:
    job: ConsolidateJob = OmegaConf.to_object(cfg)
    ckpt = resolve_checkpoint(job.checkpoint, job.run_dir)
    consolidate(ckpt, Path(job.out) if job.out else ckpt / "model.safetensors")


if __name__ == "__main__":
    main()
