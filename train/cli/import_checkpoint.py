"""Import a Hugging Face model directory into a kfm checkpoint, without a training step.

    python -m kfm.train.cli.import_checkpoint hf_dir=path/to/hf run_dir=runs/imported

Writes ``<run_dir>/imported/step_0000000/``: the weights as a ``torch.distributed.checkpoint`` (the layout
training checkpoints use, so ``kfm.train.cli.export_hf``, ``kfm.train.cli.consolidate`` and
``kfm.train.checkpoint.reader.load_model_weights`` read it), ``trainer_state.json`` (step 0, the model config) and a provenance chain: an ``import`` record (the
HF directory, its config hash, the weights digest) and a ``checkpoint`` record at step 0 that consumed no data,
both also in ``<run_dir>/provenance/ledger.jsonl``. It holds weights only (no optimizer or data-loader state):
to train from the model, use ``trainer.init_from=<hf_dir>``. Before this, the only way in was ``init_from``
with a real training step.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch.distributed.checkpoint as dcp
from omegaconf import OmegaConf

from kfm.model import Transformer
from kfm.schemas import register_schemas
from kfm.train.checkpoint.layout import STATE_FILE, step_dir
from kfm.train.cli import CONFIG_DIR
from kfm.train.hf.convert import hf_architecture
from kfm.train.hf.load import import_details, load_hf_checkpoint
from kfm.train.provenance.digests import digest_tensors, module_tensors
from kfm.train.provenance.ledger import Ledger, code_version, envelope, now, write_chain

log = logging.getLogger("kfm.train")
IMPORTED = "imported"


def import_to_checkpoint(hf_dir: str | Path, run_dir: str | Path) -> Path:
    """Write the HF model in ``hf_dir`` as the kfm checkpoint ``<run_dir>/imported/step_0000000``; returns it."""
    hf_dir, run_dir = Path(hf_dir), Path(run_dir)
    cfg, sd = load_hf_checkpoint(hf_dir)
    model = Transformer(cfg)
    model.load_state_dict(sd)
    digest = digest_tensors(module_tensors(model))
    out = step_dir(run_dir / IMPORTED, 0)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    dcp.save({"model": model.state_dict()}, checkpoint_id=str(tmp), no_dist=True)
    state = {"step": 0, "consumed": 0, "config": {"model": cfg.to_dict()}, "imported_from": str(hf_dir),
             "weights_only": True}
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
    common = {"time": now(), "run_dir": str(run_dir), "code": code_version()}
    origin = envelope({"kind": "import", "parent": None, **common, "model": cfg.to_dict(),
                       "weights": digest.summary(), **import_details(hf_dir, cfg)})
    ckpt = envelope({"kind": "checkpoint", "parent": origin["id"], **common, "step": 0, "consumed": 0,
                     "config": {"model": cfg.to_dict()}, "weights": digest.summary(), "data": []})
    write_chain(tmp, [origin, ckpt], digest.to_json())
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    ledger = Ledger(run_dir)
    for env in (origin, ckpt):
        ledger.append(env)
    log.info("imported %s (%s, %d layers) into %s", hf_dir, hf_architecture(cfg), cfg.n_layers, out)
    return out


@dataclass
class ImportJob:
    """``python -m kfm.train.cli.import_checkpoint``."""

    hf_dir: str = "???"
    """A local Hugging Face model directory (Llama, Qwen2, Qwen3 or EXAONE 4; safetensors weights)."""
    run_dir: str = "???"
    """Where the checkpoint goes (``<run_dir>/imported/step_0000000``) and whose ledger records it."""


register_schemas("import_job_schema")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="import_checkpoint")
def main(cfg) -> None:
    job: ImportJob = OmegaConf.to_object(cfg)
    print(import_to_checkpoint(job.hf_dir, job.run_dir))


if __name__ == "__main__":
    main()
