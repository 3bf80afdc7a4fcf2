"""The checkpoint manager: when to checkpoint, what goes in, how it is published, where a run resumes from.

It owns the cadence (``trainer.checkpoint.every`` and the last step), collects the state of every stateful part
of the run through ``state_dict`` / ``load_state_dict`` (the loader, the loop's counters and detectors, each
rank's RNG, and the engine, which writes its own file format), publishes atomically (``layout.publish``) and
tells the hooks (``checkpoint_staged`` while the files are written, ``checkpoint_published`` once complete).
Reading a checkpoint offline, without an engine, is ``kfm.train.checkpoint.reader``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from kfm.train.checkpoint.layout import (
    STATE_FILE,
    latest_checkpoint,
    load_rng,
    publish,
    read_state,
    save_rng,
    staging_dir,
    step_dir,
)
from kfm.train.config import CheckpointConfig


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class CheckpointManager:
    def __init__(self, cfg: CheckpointConfig, root: Path, last_step: int, device, engine,
                 stateful: dict[str, Stateful], header: Callable[[], dict],
                 notify: Callable[..., None] = lambda event, **payload: None) -> None:
        """``stateful``: the parts whose ``state_dict`` goes into the state file under their key; ``header()``:
        what else it records (step, backend, world, config); ``notify(event, **payload)``: the hooks."""
        self.cfg, self.root, self.last_step, self.device, self.engine = cfg, root, last_step, device, engine
        self.stateful, self.header, self.notify = stateful, header, notify
        self.saved_step = -1

    def due(self, step: int) -> bool:
        return step % self.cfg.every == 0 or step == self.last_step

    def save(self, step: int) -> Path:
        """Collective: checkpoint ``step`` (a no-op if it is saved already); with ``async_save`` it is
        published once the engine's background write completes."""
        if self.saved_step == step:
            return step_dir(self.root, step)
        tmp, final = staging_dir(self.root, step)
        state = {**self.header(), **{key: part.state_dict() for key, part in self.stateful.items()}}
        save_rng(tmp, self.device)
        self.notify("checkpoint_staged", tmp=tmp, step=step)

        def on_done() -> None:
            publish(tmp, final, state, self.cfg.keep)
            self.notify("checkpoint_published", path=final, step=step)

        self.engine.save(tmp, on_done=on_done)
        self.saved_step = step
        return final

    def wait(self) -> None:
        """Until a background write has finished and its checkpoint is published."""
        self.engine.wait()

    def latest(self) -> Path | None:
        return latest_checkpoint(self.root)

    def resume_path(self) -> Path | None:
        """The checkpoint ``trainer.checkpoint.resume`` names: the newest (``auto``), none (``never``) or a path."""
        if self.cfg.resume == "never":
            return None
        if self.cfg.resume == "auto":
            return self.latest()
        path = Path(self.cfg.resume)
        if not (path / STATE_FILE).is_file():
            raise FileNotFoundError(f"trainer.checkpoint.resume={self.cfg.resume}: no complete checkpoint there "
                                    f"(no {STATE_FILE}); use auto, never or a step_<N> directory")
        return path

    def load(self, path: Path) -> tuple[dict, bool]:
        """Everything back from ``path``: the engine's model and optimizer, each stateful part whose key the state
        file has (older checkpoints may lack one), this rank's RNG. Returns the state file's contents and whether
        this rank's RNG state was there (a checkpoint written by fewer ranks has none for the others)."""
        self.engine.load(path)
        state = read_state(path)
        for key, part in self.stateful.items():
            if key in state:
                part.load_state_dict(state[key])
        self.saved_step = state["step"]
        return state, load_rng(path, self.device)

    def restore_weights(self, path: Path) -> None:
        """Only the engine's model and optimizer back from ``path`` (a rollback: the data position and the
        counters go on)."""
        self.engine.wait()
        self.engine.load(path)
