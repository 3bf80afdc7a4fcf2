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
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception
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


def resolve_checkpoint(checkpoint: str, run_dir: str | Path) -> Path:
    """``checkpoint`` if given, else the newest complete one of ``run_dir``; an error naming the fix if none."""
    ckpt = Path(checkpoint) if checkpoint else latest_checkpoint(checkpoint_root(run_dir))
    if ckpt is None or not (ckpt / STATE_FILE).is_file():
        raise FileNotFoundError(f"no complete checkpoint at {checkpoint or checkpoint_root(run_dir)}: "
                                "train first (`torchrun -m train.pretrain`) or set checkpoint=<dir>")
    return ckpt


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


def check_compatible(path: str | Path, model_sd: dict) -> None:
    """The checkpoint at ``path`` must hold exactly the model's weights with the model's (global) shapes;
    a ValueError lists what differs. An unreadable checkpoint is a ValueError naming it."""
    try:
        saved = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    except Exception as err:  # noqa: BLE001 - any failure to read means the same thing to the user
        raise ValueError(f"checkpoint {path} is unreadable ({type(err).__name__}: {err}); delete it to resume from "
                         "the previous one") from err
    saved_shapes = {k[len("model."):]: tuple(v.size) for k, v in saved.items()
                    if k.startswith("model.") and hasattr(v, "size")}
    mine = {k: tuple(v.shape) for k, v in model_sd.items()}
    problems = [f"missing in checkpoint: {k} {mine[k]}" for k in sorted(set(mine) - set(saved_shapes))]
    problems += [f"not in model: {k} {saved_shapes[k]}" for k in sorted(set(saved_shapes) - set(mine))]
    problems += [f"shape {k}: checkpoint {saved_shapes[k]} vs model {mine[k]}"
                 for k in sorted(set(mine) & set(saved_shapes)) if saved_shapes[k] != mine[k]]
    if problems:
        shown = "\n  ".join(problems[:12]) + (f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else "")
        raise ValueError(f"checkpoint {path} was written by a different model config:\n  {shown}\n"
                         "resume with the model config it was trained with, or start a new run_dir")


def load_checkpoint(path: str | Path, model: nn.Module, optim: Optimizer) -> dict:
    """Collective: restore model and optimizer in place (any world size); returns the trainer state."""
    model_sd, optim_sd = get_state_dict(model, optim)
    check_compatible(path, model_sd)
    state = {"model": model_sd, "optim": optim_sd}
    try:
        dcp.load(state, checkpoint_id=str(path))
    except (Exception, CheckpointException) as err:  # noqa: BLE001 - damage surfaces as many exception types
        cause = next(iter(err.failures.values()), err) if isinstance(err, CheckpointException) else err
        first_line = (str(cause).strip().splitlines() or [""])[0]
        raise ValueError(f"checkpoint {path} could not be read ({type(cause).__name__}: {first_line}); it is "
                         "damaged: delete it to resume from the previous one") from err
    set_state_dict(model, optim, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return json.loads((Path(path) / STATE_FILE).read_text())


def load_model_weights(path: str | Path, model: nn.Module) -> dict:
    """Load only the model weights of a checkpoint into a plain (unsharded) model, in one process."""
    sd = model.state_dict()
    check_compatible(path, sd)
    dcp.load({"model": sd}, checkpoint_id=str(path))
    model.load_state_dict(sd)
    return json.loads((Path(path) / STATE_FILE).read_text())
