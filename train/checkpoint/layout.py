"""Checkpoint directories: layout, atomic publication, the ``latest`` pointer, and compatibility checks.

Layout: ``<run_dir>/checkpoints/step_<N>/`` holds the backend's files (DCP shards for FSDP2/HSDP/DDP,
DeepSpeed's own files for ZeRO), one ``rng_rank<R>.pt`` per rank and ``trainer_state.json`` (step,
backend, world size, config, data-loader and scheduler state). A checkpoint is written to
``step_<N>.tmp`` and renamed only once every rank has finished and the state file is on disk, so a
crash never leaves a half-written ``step_<N>``; ``latest`` (a one-line file naming the newest) is
replaced atomically after the rename. Resuming scans for complete directories rather than trusting
the pointer, which a crash between rename and pointer update can leave one behind.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from kfm.files import write_atomically
from kfm.model import ModelConfig, Transformer

STATE_FILE = "trainer_state.json"
LATEST = "latest"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step_{step:07d}"


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
                                "train first (`torchrun -m kfm.train.cli.pretrain`) or set checkpoint=<dir>")
    return ckpt


def read_state(path: str | Path) -> dict:
    return json.loads((Path(path) / STATE_FILE).read_text())


def staging_dir(root: str | Path, step: int) -> tuple[Path, Path]:
    """Collective: (temporary, final) directory of the checkpoint of ``step``; the temporary one is empty."""
    final = step_dir(root, step)
    tmp = final.with_name(final.name + ".tmp")
    if dist.get_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    return tmp, final


def publish(tmp: Path, final: Path, state: dict, keep: int) -> Path:
    """Collective, after every rank has written its files to ``tmp``: the state file, the rename, the
    ``latest`` pointer, then pruning to the newest ``keep``."""
    dist.barrier()
    if dist.get_rank() == 0:
        write_atomically(tmp / STATE_FILE, json.dumps(state, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        write_atomically(final.parent / LATEST, final.name + "\n")
        for old in list_checkpoints(final.parent)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def save_rng(directory: Path, device: torch.device) -> None:
    """This rank's random-number generator states (Python, CPU torch, and CUDA when used)."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    torch.save(state, directory / f"rng_rank{dist.get_rank()}.pt")


def load_rng(directory: Path, device: torch.device) -> bool:
    """Restore this rank's generator states if the checkpoint has a file for this rank."""
    path = directory / f"rng_rank{dist.get_rank()}.pt"
    if not path.is_file():
        return False
    state = torch.load(path, weights_only=False)
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    return True


def model_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Parameter names and global shapes of the plain model of ``cfg`` (built on the meta device)."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in Transformer(cfg).state_dict().items()}


def check_compatible(path: str | Path, saved: dict[str, tuple], mine: dict[str, tuple]) -> None:
    """The checkpoint at ``path`` (holding weights of shapes ``saved``) must fit the model (``mine``);
    a ValueError lists what differs."""
    problems = [f"missing in checkpoint: {k} {mine[k]}" for k in sorted(set(mine) - set(saved))]
    problems += [f"not in model: {k} {saved[k]}" for k in sorted(set(saved) - set(mine))]
    problems += [f"shape {k}: checkpoint {saved[k]} vs model {mine[k]}"
                 for k in sorted(set(mine) & set(saved)) if saved[k] != mine[k]]
    if problems:
        shown = "\n  ".join(problems[:12]) + (f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else "")
        raise ValueError(f"checkpoint {path} was written by a different model config:\n  {shown}\n"
                         "resume with the model config it was trained with, or start a new run_dir")


def _first_failure(err: BaseException) -> BaseException:
    """The underlying error: DCP's ``CheckpointException`` holds per-rank failures, each an exception or an
    ``(exception, traceback)`` pair."""
    failures = getattr(err, "failures", None)
    if isinstance(failures, dict) and failures:
        cause = next(iter(failures.values()))
        if isinstance(cause, tuple) and cause and isinstance(cause[0], BaseException):
            cause = cause[0]
        if isinstance(cause, BaseException):
            return cause
    return err


def truncated_files(path: str | Path) -> list[str]:
    """Files of a DCP checkpoint shorter than its metadata says (each item's offset + length)."""
    import torch.distributed.checkpoint as dcp

    try:
        meta = dcp.FileSystemReader(str(path)).read_metadata()
    except Exception:  # noqa: BLE001 - the metadata itself is unreadable: nothing to compare against
        return []
    need: dict[str, int] = {}
    for info in (meta.storage_data or {}).values():
        need[info.relative_path] = max(need.get(info.relative_path, 0), info.offset + info.length)
    short = []
    for rel, size in sorted(need.items()):
        file = Path(path) / rel
        have = file.stat().st_size if file.is_file() else -1
        if have < size:
            short.append(f"{rel} ({'missing' if have < 0 else f'{have} of {size} bytes'})")
    return short


def damaged(path: str | Path, err: BaseException) -> ValueError:
    """The error for a checkpoint whose files cannot be read: the real cause (a truncated or missing shard
    file by name, else the underlying error) and what to do, which depends on whether an earlier complete
    checkpoint exists."""
    path = Path(path)
    cause = _first_failure(err)
    short = truncated_files(path)
    if short:
        why = "files shorter than its metadata says: " + ", ".join(short[:4]) + (" ..." if len(short) > 4 else "")
    else:
        text = (str(cause).strip().splitlines() or [""])[0]
        if not text and isinstance(cause, EOFError):
            text = "a file ends early"
        why = f"{type(cause).__name__}: {text}" if text else type(cause).__name__
    earlier = [p for p in list_checkpoints(path.parent) if p.name < path.name]
    if earlier:
        fix = f"delete it to resume from the previous one, {earlier[-1].name}"
    else:
        fix = ("there is no earlier checkpoint to fall back to: restore it from a copy, or start over with "
               "trainer.checkpoint.resume=never")
    return ValueError(f"checkpoint {path} could not be read ({why}); it is damaged: {fix}")
