"""Sharded checkpoints with torch.distributed.checkpoint (DCP).

Layout: ``<run_dir>/checkpoints/step_<N>/`` holds the DCP files of model and optimizer
plus ``trainer_state.json`` (step, config). A checkpoint is written to ``step_<N>.tmp`` and
renamed only once every rank has finished, so a crash never leaves a half-written
``step_<N>``; ``latest_checkpoint`` only ever returns complete ones.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.optim import Optimizer

STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | Path) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def save_checkpoint(root: str | Path, step: int, model: nn.Module, optim: Optimizer, state: dict, keep: int) -> Path:
    """Collective: every rank calls it. Returns the final directory."""
    root = Path(root)
    final, tmp = root / f"step_{step:07d}", root / f"step_{step:07d}.tmp"
    rank0 = dist.get_rank() == 0
    if rank0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    model_sd, optim_sd = get_state_dict(model, optim)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
    dist.barrier()
    if rank0:
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, **state}, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def load_checkpoint(path: str | Path, model: nn.Module, optim: Optimizer) -> dict:
    """Collective: restore model and optimizer in place (any world size); returns the trainer state."""
    model_sd, optim_sd = get_state_dict(model, optim)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optim, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return json.loads((Path(path) / STATE_FILE).read_text())


def load_model_weights(path: str | Path, model: nn.Module) -> dict:
    """Load only the model weights of a checkpoint into a plain (unsharded) model, in one process."""
    sd = model.state_dict()
    dcp.load({"model": sd}, checkpoint_id=str(path))
    model.load_state_dict(sd)
    return json.loads((Path(path) / STATE_FILE).read_text())
