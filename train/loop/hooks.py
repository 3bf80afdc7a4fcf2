"""Side concerns of the training loop, each a hook (``kfm.train.loop.events``): metrics, validation,
profiling. Checkpoints are the checkpoint manager's (``kfm.train.checkpoint.manager``), provenance is
``kfm.train.loop.provenance_hook``. Only rank 0 writes metrics."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from kfm.train.config import PretrainJob
from kfm.train.loop.events import Hook
from kfm.train.loop.throughput import mfu, peak_memory_mb

log = logging.getLogger("kfm.train")


class MetricsHook(Hook):
    """Every ``trainer.metrics.log_every`` steps: training loss (mean of the applied steps), grad norm, learning rate,
    tokens/s (global and per device), MFU, data-loader wait, skipped steps, peak memory; for MoE models the expert
    load, drops, router entropy and auxiliary loss (``kfm.train.loop.balance``)."""

    priority = 10

    def on_fit_start(self, trainer) -> None:
        self._new_window(trainer)

    def state_dict(self) -> dict:
        """The losses of the open logging window, so a resumed run logs the same means."""
        return {"losses": list(self.losses)}

    def load_state_dict(self, state: dict) -> None:
        self.losses = list(state["losses"])

    def _new_window(self, trainer) -> None:
        """Start the next logging window: its losses, step count, clock and data-loader wait."""
        self.losses, self.start, self.t0 = [], trainer.step, time.perf_counter()
        trainer.data_wait = 0.0

    def on_step_end(self, trainer, result) -> None:
        tc = trainer.job.trainer
        if result.applied:
            self.losses.append(result.loss)
        if result.step % tc.metrics.log_every and result.step != tc.steps:
            return
        tokens_per_s = (result.step - self.start) * trainer.global_batch * trainer.job.loader.seq_len / (
            time.perf_counter() - self.t0)
        per_device = tokens_per_s / trainer.dist.world
        metrics = {"train_loss": sum(self.losses) / len(self.losses)} if self.losses else {}
        metrics |= {"grad_norm": result.grad_norm, "lr": result.lr, "tokens_per_s": tokens_per_s,
                    "tokens_per_s_per_device": per_device,
                    "mfu": mfu(trainer.job.model, trainer.job.loader.seq_len, per_device, trainer.peak_flops),
                    "mfu_peak": trainer.peak_name,
                    "data_wait_s": trainer.data_wait, "skipped_steps": trainer.skipped_steps,
                    "peak_memory_mb": peak_memory_mb(trainer.dist.device)}
        metrics |= trainer.balance.metrics() | trainer.mtp_losses.metrics()
        trainer.log_metrics(metrics)
        self._new_window(trainer)


class ValidationHook(Hook):
    """Validation loss and bits per byte at the start of a fresh run, every ``trainer.validation.every`` steps and at
    the end (before that step's checkpoint, whose record names the loss)."""

    priority = 20

    def on_fit_start(self, trainer) -> None:
        if trainer.step == 0:
            trainer.log_metrics(trainer.validate())

    def on_step_end(self, trainer, result) -> None:
        tc = trainer.job.trainer
        if result.step % tc.validation.every == 0 or result.step == tc.steps:
            trainer.log_metrics(trainer.validate())


class ProfilerHook(Hook):
    """``torch.profiler`` over steps ``[profile_start, profile_start + profile_steps)``; a Chrome trace per
    rank in ``<run_dir>/profile/`` (open in Perfetto or chrome://tracing)."""

    priority = 90

    def __init__(self, start: int, steps: int) -> None:
        self.start, self.steps, self.prof = start, steps, None

    def _open(self, trainer) -> None:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if trainer.dist.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.prof = torch.profiler.profile(activities=activities, record_shapes=True)
        self.prof.__enter__()

    def on_fit_start(self, trainer) -> None:
        if trainer.step == self.start:
            self._open(trainer)

    def on_step_end(self, trainer, result) -> None:
        if result.step == self.start:
            self._open(trainer)
        elif self.prof is not None and result.step == self.start + self.steps:
            self._close(trainer, result.step)

    def on_fit_end(self, trainer) -> None:
        if self.prof is not None:
            self._close(trainer, trainer.step)

    def _close(self, trainer, step: int) -> None:
        self.prof.__exit__(None, None, None)
        out = Path(trainer.job.run_dir) / "profile" / f"rank{trainer.dist.rank}_steps{self.start}-{step}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        self.prof.export_chrome_trace(str(out))
        self.prof = None
        log.info("profile of steps %d-%d written to %s", self.start, step, out)


def default_hooks(job: PretrainJob) -> list[Hook]:
    """Metrics, validation and (when ``trainer.profiler.steps``) the profiler."""
    tc = job.trainer
    hooks: list[Hook] = [MetricsHook(), ValidationHook()]
    if tc.profiler.steps:
        hooks.append(ProfilerHook(tc.profiler.start, tc.profiler.steps))
    return hooks
