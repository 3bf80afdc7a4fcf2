"""The training loop: one readable pass from batch to optimizer step, with side concerns as hooks."""

from __future__ import annotations

import logging
import math
import resource
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from data_pipeline.loader import Batch, DistributedLoader, MixtureStream, TokenWindows, validation_batches
from data_pipeline.shards import Manifest, file_sha256
from model import Transformer
from train.checkpoint import checkpoint_root, latest_checkpoint, load_checkpoint, save_checkpoint
from train.config import PretrainJob
from train.distributed import DistInfo, all_reduce_mean
from train.metrics import MetricsSink
from train.optim import build_optimizer, lr_at
from train.parallelize import parallelize
from train.throughput import SpikeDetector, device_peak_flops, mfu

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
            "the shards with `python -m data_pipeline.build`, or restore the tokenizer they were built with"
        )


def check_vocab(job: PretrainJob, manifest: Manifest, data_dir: Path) -> None:
    if manifest.vocab_size != job.model.vocab_size:
        raise ValueError(
            f"model.vocab_size={job.model.vocab_size} but the tokenizer behind {data_dir} has "
            f"{manifest.vocab_size} pieces: set model.vocab_size={manifest.vocab_size} "
            "(or retrain the tokenizer with tokenizer.vocab_size to match)"
        )


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocations on a GPU, else the peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _assign_local_shard(param: torch.Tensor, full: torch.Tensor) -> None:
    """Store this rank's part of ``full`` (drawn identically on every rank) in a possibly sharded parameter."""
    if isinstance(param, DTensor):
        full = distribute_tensor(full.to(param.device), param.device_mesh, param.placements, src_data_rank=None)
    param.copy_(full)


def build_model(job: PretrainJob, info: DistInfo) -> nn.Module:
    """The model, parallelised. FSDP2/HSDP: built on the meta device, sharded, then materialised shard by
    shard, so no rank ever holds the full model; DDP (which broadcasts full weights) builds it whole.
    Either way the weights equal ``Transformer(cfg).init_weights(seed)``'s."""
    tc = job.trainer
    if tc.backend == "ddp":
        model = Transformer(job.model)
        model.init_weights(seed=tc.seed)
        return parallelize(model.to(info.device), tc, info)
    with torch.device("meta"):
        model = Transformer(job.model)
    model = parallelize(model, tc, info)
    model.to_empty(device=info.device)
    model.init_weights(seed=tc.seed, assign=_assign_local_shard)
    return model


class Trainer:
    def __init__(self, job: PretrainJob, dist_info: DistInfo) -> None:
        self.job, self.dist = job, dist_info
        run_dir = Path(job.run_dir)
        data_dir = run_dir / "data"
        tc = job.trainer
        verify = job.data.verify_checksums
        self.val_windows = TokenWindows(data_dir, "val", job.data.seq_len, verify=verify)
        manifest = self.val_windows.manifest
        check_vocab(job, manifest, data_dir)
        check_tokenizer(run_dir, manifest, data_dir)
        world_batch = tc.local_batch_size * dist_info.world
        self.global_batch = tc.global_batch_size or world_batch
        if self.global_batch % world_batch:
            raise ValueError(
                f"trainer.global_batch_size={self.global_batch} is not divisible by trainer.local_batch_size "
                f"({tc.local_batch_size}) x data-parallel ranks ({dist_info.world}) = {world_batch}: choose a "
                "multiple of it, or change the micro batch or the number of ranks")
        self.accum = self.global_batch // world_batch
        stream = MixtureStream(data_dir, job.data.seq_len, job.data.weights(), tc.seed, verify)
        self.loader = DistributedLoader(stream, tc.local_batch_size, dist_info.rank, dist_info.world)
        self.model: nn.Module = build_model(job, dist_info)
        self.optim = build_optimizer(self.model, job.optim)
        self.ckpt_root = checkpoint_root(run_dir)
        self.step = 0
        self.skipped_steps = 0
        self.data_wait = 0.0
        self.spikes = SpikeDetector(tc.spike_sigmas, tc.spike_window)
        self.peak_name, self.peak_flops = device_peak_flops(tc.device_peak, dist_info.device)
        self.stop_requested = self.preempted = False
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                signal.signal(sig, self._on_signal)
        self.sink = MetricsSink(run_dir, asdict(job), tc.wandb_mode, tc.wandb_project) if dist_info.is_main else None

    def _on_signal(self, signum, frame) -> None:
        self.stop_requested = True
        log.warning("received %s: checkpointing after this step, then exiting with status %d (requeue)",
                    signal.Signals(signum).name, EXIT_REQUEUE)

    def stop_agreed(self) -> bool:
        """True on every rank when any rank received a stop signal (ranks see signals at different times)."""
        flag = torch.tensor([1.0 if self.stop_requested else 0.0], device=self.dist.device)
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def maybe_resume(self) -> None:
        ckpt = latest_checkpoint(self.ckpt_root) if self.job.trainer.resume else None
        if ckpt is not None:
            state = load_checkpoint(ckpt, self.model, self.optim)
            self.step = state["step"]
            self.loader.load_state_dict(state["data"])
            log.info("resumed from %s at step %d", ckpt, self.step)

    def loss(self, batch: Batch, z_loss: float | None = None) -> torch.Tensor:
        tc, dev = self.job.trainer, self.dist.device
        docs = (batch.position_ids.to(dev), batch.cu_seqlens) if tc.document_masking else (None, None)
        return self.model(batch.inputs.to(dev), *docs, targets=batch.targets.to(dev),
                          z_loss=tc.z_loss if z_loss is None else z_loss)

    def next_batch(self) -> Batch:
        t0 = time.perf_counter()
        batch = self.loader.next_batch()
        self.data_wait += time.perf_counter() - t0
        return batch

    def train_step(self, step: int) -> tuple[float, float, bool]:
        """One optimizer step over ``accum`` micro batches: (mean loss over ranks, grad norm, skipped)."""
        tc = self.job.trainer
        lr = lr_at(step, tc.steps, self.job.optim)
        for group in self.optim.param_groups:
            group["lr"] = lr
        total = 0.0
        for micro in range(self.accum):
            if hasattr(self.model, "set_requires_gradient_sync"):  # FSDP2: reduce gradients once, at the last
                self.model.set_requires_gradient_sync(micro == self.accum - 1)
            loss = self.loss(self.next_batch()) / self.accum
            loss.backward()
            total += loss.item()
        loss_value = all_reduce_mean(total, self.dist.device)
        clip = self.job.optim.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else float("inf"))
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        grad_norm = grad_norm.item()
        nonfinite = not (math.isfinite(loss_value) and math.isfinite(grad_norm))
        if nonfinite and not tc.skip_nonfinite:
            raise FloatingPointError(f"step {step}: loss {loss_value}, grad norm {grad_norm} not finite "
                                     "(trainer.skip_nonfinite=false); resume from the last checkpoint")
        spike = not nonfinite and self.spikes.is_spike(loss_value)
        if spike and tc.spike_action == "stop":
            raise RuntimeError(f"step {step}: loss spike {loss_value:.4g} (trainer.spike_sigmas={tc.spike_sigmas} "
                               f"over the last {tc.spike_window} steps); resume from the last checkpoint")
        if nonfinite or spike:
            self.optim.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            log.warning("step %d skipped (%s: loss %.4g, grad norm %.4g); %d skipped so far", step,
                        "not finite" if nonfinite else "loss spike", loss_value, grad_norm, self.skipped_steps)
            return loss_value, grad_norm, True
        self.optim.step()
        self.optim.zero_grad(set_to_none=True)
        return loss_value, grad_norm, False

    @torch.no_grad()
    def validate(self) -> float:
        self.model.eval()
        tc, losses = self.job.trainer, []
        for batch in validation_batches(self.val_windows, tc.local_batch_size, self.dist.rank, self.dist.world,
                                        tc.val_batches):
            losses.append(self.loss(batch, z_loss=0.0).item())
        self.model.train()
        return all_reduce_mean(sum(losses) / len(losses), self.dist.device)

    def save(self) -> Path:
        return save_checkpoint(self.ckpt_root, self.step, self.model, self.optim,
                               {"config": asdict(self.job), "data": self.loader.state_dict()},
                               self.job.trainer.keep_checkpoints)

    def fit(self) -> dict:
        tc = self.job.trainer
        self.maybe_resume()
        tokens_per_step = self.global_batch * self.job.data.seq_len
        window_loss, window_start, t_last = [], self.step, time.perf_counter()
        last = {}
        if self.step == 0:  # the starting point of the validation curve
            last["val_loss"] = self.validate()
            if self.sink:
                self.sink.log(0, {"val_loss": last["val_loss"]})
        while self.step < tc.steps:
            loss, grad_norm, skipped = self.train_step(self.step)
            if not skipped:
                window_loss.append(loss)
            self.step += 1
            if self.step % tc.log_every == 0 or self.step == tc.steps:
                elapsed = time.perf_counter() - t_last
                tokens_per_s = (self.step - window_start) * tokens_per_step / elapsed
                per_device = tokens_per_s / self.dist.world
                metrics = {}
                if window_loss:
                    last["train_loss"] = metrics["train_loss"] = sum(window_loss) / len(window_loss)
                metrics |= {"grad_norm": grad_norm, "lr": lr_at(self.step - 1, tc.steps, self.job.optim),
                            "tokens_per_s": tokens_per_s, "tokens_per_s_per_device": per_device,
                            "mfu": mfu(self.job.model, self.job.data.seq_len, per_device, self.peak_flops),
                            "data_wait_s": self.data_wait, "skipped_steps": self.skipped_steps,
                            "peak_memory_mb": peak_memory_mb(self.dist.device)}
                if self.sink:
                    self.sink.log(self.step, metrics)
                window_loss, window_start, t_last = [], self.step, time.perf_counter()
                self.data_wait = 0.0
            if self.step % tc.val_every == 0 or self.step == tc.steps:
                last["val_loss"] = self.validate()
                if self.sink:
                    self.sink.log(self.step, {"val_loss": last["val_loss"]})
            if self.stop_agreed():
                path = self.save()
                self.preempted = True
                log.warning("stopped by a signal at step %d; checkpoint %s", self.step, path)
                break
            if self.step % tc.checkpoint_every == 0 or self.step == tc.steps:
                path = self.save()
                if self.sink:
                    log.info("checkpoint %s", path)
        if self.sink:
            self.sink.close()
        return last
