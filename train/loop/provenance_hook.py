"""Provenance as a hook: the recorder (``kfm.train.loop.recorder``) told of the run's origin, every checkpoint,
resume and rollback through the trainer's events, instead of calls inside the loop."""

from __future__ import annotations

from pathlib import Path

from kfm.train.loop.events import Hook
from kfm.train.loop.recorder import Recorder


class ProvenanceHook(Hook):
    priority = 0  # the origin is recorded before anything else sees the weights

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.pending: dict[int, dict | None] = {}
        """Records of staged checkpoints, by step, until they are published (an async save publishes later)."""

    def on_fit_start(self, trainer) -> None:
        if not trainer.resumed:
            self.recorder.start(trainer.engine)

    def on_resumed(self, trainer, path: Path, foreign: bool) -> None:
        self.recorder.resumed(path, foreign, trainer.engine, trainer.step, trainer.loader.consumed)

    def on_checkpoint_staged(self, trainer, tmp: Path, step: int) -> None:
        self.pending[step] = self.recorder.checkpoint(
            tmp, trainer.engine, step, trainer.loader.consumed,
            {"skipped_steps": trainer.skipped_steps, "backend": trainer.job.trainer.parallelism.backend,
             "world": trainer.dist.world, "train_loss": trainer.last.get("train_loss")})

    def on_checkpoint_published(self, trainer, path: Path, step: int) -> None:
        self.recorder.published(self.pending.pop(step, None))

    def on_rolled_back(self, trainer, path: Path) -> None:
        self.recorder.rolled_back(path, trainer.engine, trainer.step, trainer.loader.consumed)
