"""The training loop: one readable pass from batch to optimizer step.

Side concerns are hooks told of the run's events (``kfm.train.loop.events``: metrics, validation, profiling,
provenance); checkpoints are the checkpoint manager's (``kfm.train.checkpoint.manager``), which collects the
state of the loader and of the loop (``state_dict`` here: counters, the spike detector, the hooks' state)."""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from kfm.data_pipeline.loader import Batch, DistributedLoader, MixtureStream, TokenWindows, validation_batches
from kfm.data_pipeline.shards import TOKEN_BYTES, Manifest, file_sha256
from kfm.train.checkpoint.layout import checkpoint_root
from kfm.train.checkpoint.manager import CheckpointManager
from kfm.train.config import PretrainJob
from kfm.train.loop.balance import ExpertBalance
from kfm.train.loop.mtp_losses import MTPLosses
from kfm.train.parallel.context_parallel import local_batch
from kfm.train.parallel.layout import check_layout, check_microbatches
from kfm.train.loop.events import Event, Hooks
from kfm.train.loop.hooks import default_hooks
from kfm.train.loop.init_from import initial_weights
from kfm.train.loop.metrics import MetricsSink
from kfm.train.loop.provenance_hook import ProvenanceHook
from kfm.train.loop.recorder import Recorder
from kfm.train.loop.throughput import SpikeDetector, device_peak_flops
from kfm.train.loop.validation import held_out_aggregate, held_out_sources
from kfm.train.optim import lr_at
from kfm.train.parallel.distributed import DistInfo, all_reduce_sum
from kfm.train.parallel.engine import build_engine

log = logging.getLogger("kfm.train")
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
"""What Slurm sends before a time limit (``--signal``) or on preemption."""
EXIT_REQUEUE = 75
"""Exit status after a signal-triggered checkpoint (EX_TEMPFAIL: try again): the launcher requeues the job."""


def check_tokenizer(run_dir: Path, manifest: Manifest, data_dir: Path) -> None:
    """The run's tokenizer must be the one the shards were built with."""
    model = run_dir / "tokenizer" / "tokenizer.model"
    if model.is_file() and file_sha256(model) != manifest.tokenizer_sha256:
        raise ValueError(
            f"{model} is not the tokenizer the shards in {data_dir} were built with (sha256 differs): rebuild "
            "the shards with `python -m kfm.data_pipeline.build`, or restore the tokenizer they were built with"
        )


def check_vocab(job: PretrainJob, manifest: Manifest, data_dir: Path) -> None:
    if manifest.vocab_size != job.model.vocab_size and job.trainer.init_from:
        raise ValueError(
            f"the model in trainer.init_from={job.trainer.init_from} has a {job.model.vocab_size}-token vocabulary "
            f"but the shards in {data_dir} were tokenized with {manifest.vocab_size} pieces: build the shards with "
            "that model's tokenizer (data_pipeline.build tokenizer_model=...)")
    if manifest.vocab_size != job.model.vocab_size:
        raise ValueError(
            f"model.vocab_size={job.model.vocab_size} but the tokenizer behind {data_dir} has "
            f"{manifest.vocab_size} pieces: set model.vocab_size={manifest.vocab_size} "
            "(or retrain the tokenizer with tokenizer.vocab_size to match)"
        )


@dataclass
class StepResult:
    step: int
    """Steps done (1-based after the step)."""
    loss: float
    """Training loss, mean over the global batch."""
    grad_norm: float
    lr: float
    applied: bool
    """False for a skipped step (non-finite loss or gradient, or a loss spike)."""


class Trainer:
    """``hooks``: the side concerns (default ``default_hooks``: metrics, validation, profiler); the provenance hook
    is always added (it records nothing with ``provenance.enabled=false``)."""

    def __init__(self, job: PretrainJob, dist_info: DistInfo, hooks: list | None = None) -> None:
        self.job, self.dist = job, dist_info
        self.run_dir = Path(job.run_dir)
        data_dir = Path(job.data_dir) if job.data_dir else self.run_dir / "data"
        tc = job.trainer
        verify = job.loader.verify_checksums
        self.layout = check_layout(tc.parallelism, job.model, dist_info.world, job.loader.seq_len)
        """Which ranks read different samples (data parallel) and which hold one replica together."""
        self.val_sets, self.val_tokens, manifest = held_out_sources(data_dir, job.loader.seq_len, self.layout.dp,
                                                                    verify)
        stream = MixtureStream(data_dir, job.loader.seq_len, job.loader.mixture(), tc.seed, verify)
        self.recorder = Recorder(job, dist_info, data_dir, manifest, stream)
        init_state = None
        if tc.init_from:
            job.model, init_state = initial_weights(tc.init_from, tc.init_layers, job.model, self.recorder.observe)
            if job.loader.seq_len > job.model.max_seq_len:
                raise ValueError(f"loader.seq_len={job.loader.seq_len} exceeds the max_seq_len {job.model.max_seq_len} "
                                 f"of {tc.init_from}: lower loader.seq_len")
        check_vocab(job, manifest, data_dir)
        check_tokenizer(self.run_dir, manifest, data_dir)
        token_bytes = data_dir / TOKEN_BYTES
        self.token_bytes = torch.from_numpy(np.load(token_bytes)).long() if token_bytes.is_file() else None
        # init_from may change the model
        self.layout = check_layout(tc.parallelism, job.model, dist_info.world, job.loader.seq_len)
        dp, dp_rank = self.layout.dp, self.layout.dp_rank(dist_info.rank)
        world_batch = tc.local_batch_size * dp
        self.global_batch = tc.global_batch_size or world_batch
        if self.global_batch % world_batch:
            raise ValueError(
                f"trainer.global_batch_size={self.global_batch} is not divisible by trainer.local_batch_size "
                f"({tc.local_batch_size}) x data-parallel ranks ({dp}) = {world_batch}: choose a "
                "multiple of it, or change the micro batch or the number of ranks")
        self.accum = self.global_batch // world_batch
        check_microbatches(tc.parallelism, self.accum)
        self.loader = DistributedLoader(stream, tc.local_batch_size, dp_rank, dp)
        self.engine = build_engine(job, dist_info, self.accum, init_state)
        self.model = self.engine.model
        self.balance = ExpertBalance(self.model, self.accum, tc.metrics.moe_collapse_ratio, dist_info.is_main)
        """MoE models: the expert biases moved after every step, the load metrics."""
        self.mtp_losses = MTPLosses(self.model)
        """Multi-token prediction: each depth's loss, logged apart from the training loss."""
        self.ckpt_root = checkpoint_root(self.run_dir)
        self.step = self.skipped_steps = self.consecutive_spikes = self.rollbacks = 0
        self.resumed = False
        self.data_wait = 0.0
        self.last: dict[str, float] = {}
        self.hook_state: dict[str, dict] = {}
        self.spikes = SpikeDetector(tc.stability.spike_sigmas, tc.stability.spike_window)
        self.peak_name, self.peak_flops = device_peak_flops(tc.metrics.device_peak, dist_info.device)
        self.stop_requested = self.stop_seen = self.preempted = False
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                signal.signal(sig, self._on_signal)
        mc = tc.metrics
        self.sink = (MetricsSink(self.run_dir, asdict(job), mc.wandb_mode, mc.wandb_project, mc.wandb_group)
                     if dist_info.is_main else None)
        self.hooks = Hooks([*(default_hooks(job) if hooks is None else hooks), ProvenanceHook(self.recorder)])
        self.checkpoints = CheckpointManager(tc.checkpoint, self.ckpt_root, tc.steps, dist_info.device, self.engine,
                                             {"data": self.loader, "loop": self}, self.checkpoint_header, self.emit)

    def emit(self, event: Event, **payload) -> None:
        self.hooks.emit(event, self, **payload)

    # ----- signals -----
    def _on_signal(self, signum, frame) -> None:
        self.stop_requested = True
        log.warning("received %s: checkpointing after this step, then stopping for a requeue",
                    signal.Signals(signum).name)

    def agree(self, mean_loss: torch.Tensor) -> tuple[float, bool]:
        """One collective and one host synchronisation a step: the global mean loss, and whether any rank has
        received a stop signal (ranks see signals at different times, so they must agree before stopping)."""
        flag = torch.tensor(1.0 if self.stop_requested else 0.0, dtype=torch.float64, device=self.dist.device)
        both = torch.stack([mean_loss.detach().to(torch.float64), flag])
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(both)
        loss_sum, stops = both.tolist()
        return loss_sum / self.layout.loss_ranks, stops > 0  # pipeline: only the last stage's ranks hold a loss

    # ----- checkpoints -----
    def checkpoint_header(self) -> dict:
        """What the state file records besides the stateful parts' states."""
        tc = self.job.trainer
        return {"step": self.step, "backend": tc.parallelism.backend, "world": self.dist.world,
                "config": asdict(self.job), "skipped_steps": self.skipped_steps,
                "scheduler": {"schedule": self.job.optim.schedule,
                              "next_lr": lr_at(self.step, tc.steps, self.job.optim)}}

    def save(self) -> Path:
        """Checkpoint the current step (collective); a no-op if this step is already saved."""
        return self.checkpoints.save(self.step)

    def state_dict(self) -> dict:
        """The loop's part of a checkpoint: everything a later decision or log line depends on: the spike
        detector's window, the consecutive-spike and rollback counts, the last logged values and each hook's own
        state."""
        return {"spikes": self.spikes.state_dict(), "consecutive_spikes": self.consecutive_spikes,
                "rollbacks": self.rollbacks, "last": dict(self.last), "hooks": self.hooks.state_dict(),
                "moe": self.balance.state_dict(), "mtp": self.mtp_losses.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.spikes.load_state_dict(state["spikes"])
        self.consecutive_spikes, self.rollbacks = state["consecutive_spikes"], state["rollbacks"]
        self.last = dict(state["last"])
        self.balance.load_state_dict(state.get("moe", {}), self.dist.device)  # checkpoints before MoE lack it
        self.mtp_losses.load_state_dict(state.get("mtp", {}), self.dist.device)
        self.hook_state = state["hooks"]  # applied after the hooks' on_fit_start (which resets their windows)

    def maybe_resume(self) -> bool:
        """Continue from the checkpoint ``trainer.checkpoint.resume`` names, if any; True if resumed."""
        ckpt = self.checkpoints.resume_path()
        if ckpt is None:
            return False
        state, had_rng = self.checkpoints.load(ckpt)  # engine, loader ("data"), loop ("loop"; older ones lack it)
        self.step = state["step"]
        self.skipped_steps = state.get("skipped_steps", 0)
        if not had_rng:
            log.info("no random-generator state for rank %d in %s (written by %d ranks)", self.dist.rank, ckpt,
                     state["world"])
        self.emit(Event.resumed, path=ckpt, foreign=ckpt.resolve().parent != self.ckpt_root.resolve())
        log.info("resumed from %s at step %d", ckpt, self.step)
        return True

    def rollback(self) -> None:
        """Weights and optimizer state back to the newest checkpoint; the step and the data position go on,
        so the batches behind the spikes are not seen again."""
        ckpt = self.checkpoints.latest()
        if ckpt is None:
            raise RuntimeError(f"step {self.step}: {self.job.trainer.stability.spike_rollback_after} loss spikes in a "
                               "row and no checkpoint to roll back to; lower trainer.checkpoint.every or the "
                               "learning rate")
        self.checkpoints.restore_weights(ckpt)
        self.emit(Event.rolled_back, path=ckpt)
        self.rollbacks += 1
        log.warning("step %d: rolled back weights and optimizer to %s (rollback %d)", self.step, ckpt, self.rollbacks)

    # ----- the step -----
    def loss(self, batch: Batch, z_loss: float | None = None) -> torch.Tensor:
        tc, dev = self.job.trainer, self.dist.device
        z_loss = tc.z_loss if z_loss is None else z_loss
        if self.layout.cp > 1:  # this rank's chunks of every sequence, the documents of the whole rows
            inputs, targets, positions, docs = local_batch(
                batch.inputs.to(dev), batch.targets.to(dev), batch.position_ids.to(dev), batch.cu_seqlens_flat,
                self.layout.cp, self.layout.cp_rank(self.dist.rank), tc.document_masking)
            return self.model(inputs, positions, docs, targets=targets, z_loss=z_loss)
        docs = (batch.position_ids.to(dev), batch.cu_seqlens_flat) if tc.document_masking else (None, None)
        return self.model(batch.inputs.to(dev), *docs, targets=batch.targets.to(dev), z_loss=z_loss)

    def next_batch(self) -> Batch:
        t0 = time.perf_counter()
        batch = self.loader.next_batch()
        self.data_wait += time.perf_counter() - t0
        return batch

    def judge_loss(self, loss: float) -> str:
        """``""`` to apply the step, else why it is skipped; raises where the config says stop."""
        tc = self.job.trainer
        if not math.isfinite(loss):
            if not tc.stability.skip_nonfinite:
                raise FloatingPointError(f"step {self.step}: loss {loss} not finite "
                                         "(trainer.stability.skip_nonfinite=false); "
                                         "resume from the last checkpoint")
            return "loss not finite"
        if not self.spikes.is_spike(loss):
            self.consecutive_spikes = 0
            return ""
        if tc.stability.spike_action == "stop":
            raise RuntimeError(f"step {self.step}: loss spike {loss:.4g} "
                               f"(trainer.stability.spike_sigmas={tc.stability.spike_sigmas} "
                               f"over the last {tc.stability.spike_window} steps); resume from the last checkpoint")
        self.consecutive_spikes += 1
        return "loss spike"

    def train_step(self) -> StepResult:
        """One optimizer step over ``accum`` micro batches.

        The micro-batch losses stay on the device and are summed there; the step synchronises with the host
        twice, whatever ``accum`` is: once for the global mean loss (reduced together with the stop-signal
        flag, ``agree``) and once for the gradient norm. The mean loss is known before the *last* backward, so
        that a step to skip (non-finite loss, a spike) is discarded the same way by every backend: DeepSpeed
        steps its optimizer inside the last micro-batch's ``backward``/``step`` at the accumulation boundary
        and offers no way to drop a step after that, so kfm poisons that backward's gradients instead, and
        DeepSpeed's overflow check skips the step. So the decision comes before that backward, and the loss
        synchronisation with it."""
        tc = self.job.trainer
        lr = lr_at(self.step, tc.steps, self.job.optim)
        self.engine.set_lr(lr)
        total, skip = torch.zeros((), dtype=torch.float64, device=self.dist.device), ""
        if self.engine.pipeline is not None:  # the schedule runs every micro batch's forward and backward
            loss_value, skip = self.pipeline_step()
        for micro in range(self.accum if self.engine.pipeline is None else 0):
            last = micro == self.accum - 1
            loss = self.loss(self.next_batch())
            total += loss.detach()
            if last:
                loss_value, self.stop_seen = self.agree(total / self.accum)
                skip = self.judge_loss(loss_value)
            self.engine.backward(loss, last=last, discard=bool(skip))
        grad_norm, applied = self.engine.step(discard=bool(skip))
        self.balance.after_step(applied)
        self.mtp_losses.after_step()
        if not applied:
            skip = skip or "gradient not finite"
            if not tc.stability.skip_nonfinite and skip == "gradient not finite":
                raise FloatingPointError(f"step {self.step}: grad norm {grad_norm} not finite "
                                         "(trainer.stability.skip_nonfinite=false); resume from the last checkpoint")
            self.skipped_steps += 1
            log.warning("step %d skipped (%s: loss %.4g, grad norm %.4g); %d skipped so far", self.step, skip,
                        loss_value, grad_norm, self.skipped_steps)
        self.step += 1
        if tc.stability.spike_action == "rollback" and self.consecutive_spikes >= tc.stability.spike_rollback_after:
            self.rollback()
            self.consecutive_spikes = 0
        return StepResult(self.step, loss_value, grad_norm, lr, applied)

    def pipeline_step(self) -> tuple[float, str]:
        """The step's micro batches through the pipeline schedule, forward and backward; the global mean loss
        and whether to skip the step (decided after the backward: the engine then drops the gradients)."""
        batches = [self.next_batch() for _ in range(self.accum)]
        dev = self.dist.device
        inputs, positions, targets = (torch.cat([getattr(b, key) for b in batches]).to(dev)
                                      for key in ("inputs", "position_ids", "targets"))
        mean = self.engine.pipeline.step(inputs, positions, targets, self.job.trainer.z_loss)
        loss_value, self.stop_seen = self.agree(mean)
        return loss_value, self.judge_loss(loss_value)

    def eval_loss(self, batch: Batch) -> torch.Tensor | None:
        """A batch's mean loss without z-loss; None on a pipeline rank that holds no loss."""
        if self.engine.pipeline is None:
            return self.loss(batch, z_loss=0.0)
        dev = self.dist.device
        return self.engine.pipeline.evaluate(batch.inputs.to(dev), batch.position_ids.to(dev), batch.targets.to(dev))

    @torch.no_grad()
    def _validate_on(self, windows: TokenWindows) -> tuple[float, float, float]:
        """(summed loss in nats, tokens, bytes of text behind them) over this rank's share of the batches."""
        tc = self.job.trainer
        nats = torch.zeros((), dtype=torch.float64, device=self.dist.device)  # summed on the device: no sync
        tokens = nbytes = 0
        dp_rank, dp = self.layout.dp_rank(self.dist.rank), self.layout.dp
        for batch in validation_batches(windows, tc.local_batch_size, dp_rank, dp, tc.validation.batches):
            loss = self.eval_loss(batch)
            if loss is None:  # counted by the last pipeline stage's ranks
                continue
            n = batch.targets.numel()
            nats += loss.detach().to(torch.float64) * n
            tokens += n
            if self.token_bytes is not None:  # CPU tensors: no device synchronisation
                nbytes += int(self.token_bytes[batch.targets].sum())
        return nats, float(tokens), float(nbytes)

    def validate(self) -> dict[str, float]:
        """Validation loss (nats per token) and, when the shards carry token byte lengths, bits per byte (the
        summed loss in bits over the bytes of text the targets stand for, comparable across tokenizers).

        Each source is measured on the first ``trainer.validation.batches`` global batches of its held-out text
        (``val_loss/<source>``, logged with ``trainer.validation.per_source``). The headline ``val_loss`` is their mean
        weighted by each source's held-out tokens (``held_out_aggregate``), so every source counts by its size
        and not only the first in the manifest."""
        self.model.eval()
        per_source = {}
        for name, windows in self.val_sets.items():
            per_source[name] = all_reduce_sum(list(self._validate_on(windows)), self.dist.device)
        self.model.train()
        out = held_out_aggregate(per_source, self.val_tokens)
        if self.job.trainer.validation.per_source:
            for name, sums in per_source.items():
                out.update({f"{k}/{name}": v for k, v in held_out_aggregate({name: sums}, self.val_tokens).items()})
        return out

    def log_metrics(self, metrics: dict) -> None:
        self.last.update({k: v for k, v in metrics.items() if k in ("train_loss", "val_loss", "val_bpb")})
        if self.sink:
            self.sink.log(self.step, metrics)

    # ----- the loop -----
    def fit(self) -> dict:
        self.resumed = self.maybe_resume()
        self.emit(Event.fit_start)
        self.hooks.load_state_dict(self.hook_state)
        async_save = self.job.trainer.checkpoint.async_save
        while self.step < self.job.trainer.steps:
            result = self.train_step()
            self.emit(Event.step_end, result=result)
            if self.checkpoints.due(self.step):
                log.info("checkpoint %s%s", self.save(), " (writing in the background)" if async_save else "")
            if self.stop_seen:
                path = self.save()
                self.checkpoints.wait()
                self.preempted = True
                log.warning("stopped by a signal at step %d; checkpoint %s", self.step, path)
                break
        self.emit(Event.fit_end)
        self.checkpoints.wait()
        if self.sink:
            self.sink.close()
        return self.last
