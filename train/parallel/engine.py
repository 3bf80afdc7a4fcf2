"""What the training loop drives: a model with its optimizer, behind one small interface per backend.

The loop (``kfm.train.loop.trainer``) calls, per optimizer step::

    engine.set_lr(lr)
    for each micro batch: loss = engine.model(...); engine.backward(loss, last=..., discard=...)
    grad_norm, applied = engine.step()

and ``save(tmp_dir)`` / ``load(dir)`` for checkpoints. ``TorchEngine`` covers FSDP2, HSDP and DDP
(parallelised by ``kfm.train.parallel.parallelize``, checkpoints with ``torch.distributed.checkpoint``);
``kfm.train.parallel.deepspeed_engine.DeepSpeedEngine`` covers ZeRO 1/2/3 with DeepSpeed's own checkpoints.
``discard`` makes the step a no-op (a non-finite or spiking loss); a step whose gradient norm is not
finite is never applied either, and ``applied`` says which happened.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.tensor import DTensor

from kfm.model import Transformer
from kfm.train.checkpoint.layout import check_compatible, damaged, model_shapes
from kfm.train.checkpoint.reader import dcp_optimizer_flattened, dcp_saved_shapes
from kfm.train.config import PretrainJob
from kfm.train.optim import build_optimizer
from kfm.train.parallel.distributed import DistInfo
from kfm.train.parallel.fp8 import after_optimizer_step, uses_fp8_all_gather
from kfm.train.parallel.parallelize import assign_local_shard, build_mesh, parallelize
from kfm.train.provenance.digests import module_tensors

log = logging.getLogger("kfm.train")
FLAT = StateDictOptions(flatten_optimizer_state_dict=True)
"""Checkpoints keep the optimizer's hyperparameters per parameter name (as torchtitan does): under pipeline
parallelism each rank's parameter groups name only its stages' parameters, which one saved list cannot hold."""


def build_model(job: PretrainJob, info: DistInfo, mesh=None) -> nn.Module:
    """The model, parallelised. FSDP2/HSDP: built on the meta device, sharded, then materialised shard by
    shard, so no rank ever holds the full model; DDP (which broadcasts full weights) builds it whole.
    Either way the weights equal ``Transformer(cfg).init_weights(seed)``'s."""
    tc = job.trainer
    mesh = mesh or build_mesh(tc.parallelism, info)
    if tc.parallelism.backend == "ddp":
        model = Transformer(job.model, job.model_runtime)
        model.init_weights(seed=tc.seed)
        return parallelize(model.to(info.device), tc.parallelism, info, mesh)
    with torch.device("meta"):
        model = Transformer(job.model, job.model_runtime)
    model = parallelize(model, tc.parallelism, info, mesh)
    model.to_empty(device=info.device)
    model.init_weights(seed=tc.seed, assign=assign_local_shard)
    return model


def clip_grad_norm(params: list[torch.Tensor], max_norm: float, stages=None) -> float:
    """The gradients' global L2 norm (one host synchronisation), and the gradients scaled to at most ``max_norm``.
    Under tensor or expert parallelism the gradients live on different meshes (a block's on data x tensor parallel,
    a replicated norm's on data parallel only), which one ``clip_grad_norm_`` cannot stack: each mesh's gradients
    are reduced on their own and the norms combined; under pipeline parallelism the squared norms of the stages
    are summed over ``stages`` (the pipeline process group)."""
    grads = [p.grad for p in params if p.grad is not None]
    meshes = {g.device_mesh for g in grads if isinstance(g, DTensor)}
    if len(meshes) <= 1 and stages is None:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return (norm.full_tensor() if isinstance(norm, DTensor) else norm).item()
    groups: dict = {}
    for g in grads:
        groups.setdefault(g.device_mesh if isinstance(g, DTensor) else None, []).append(g)
    norms = [torch.nn.utils.get_total_norm(group) for group in groups.values()]
    squared = torch.stack([n.full_tensor() if isinstance(n, DTensor) else n for n in norms]).float().pow(2).sum()
    if stages is not None:
        dist.all_reduce(squared, group=stages)
    total = squared.sqrt().item()
    coef = max_norm / (total + 1e-6)
    if coef < 1.0 and math.isfinite(total):
        for g in grads:
            g.mul_(coef)
    return total


class TorchEngine:
    """FSDP2 / HSDP / DDP with a torch AdamW; checkpoints are DCP directories (any world size on load)."""

    init_cast = None
    """The dtype the initial weights are rounded to before training (none here: FSDP2 keeps fp32 shards)."""

    def __init__(self, job: PretrainJob, info: DistInfo, accum: int, init_state: dict | None = None) -> None:
        self.job, self.info, self.accum = job, info, accum
        mesh = build_mesh(job.trainer.parallelism, info)
        self.pipeline = None
        """With ``trainer.parallelism.pp`` > 1: this rank's stages and their schedule; ``model`` is then the stages
        seen as one module under the plain model's names."""
        if job.trainer.parallelism.pp > 1:
            from kfm.train.parallel.pipeline import build_pipeline

            self.pipeline = build_pipeline(job, info, mesh, accum)
            self.model = self.pipeline.parts
        else:
            self.model = build_model(job, info, mesh)
        if init_state is not None:  # every rank holds the full state dict and keeps its shard
            keys = self.model.state_dict().keys()
            set_model_state_dict(self.model, {k: v for k, v in init_state.items() if k in keys},
                                 options=StateDictOptions(full_state_dict=True))
        self.optimizer = build_optimizer(self.model, job.optim)
        self._fp8_scales = uses_fp8_all_gather(self.model)
        self._async_group = None
        self._pending = None  # (future, publish callback) of an async save in flight

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def backward(self, loss: torch.Tensor, last: bool, discard: bool) -> None:
        if hasattr(self.model, "set_requires_gradient_sync"):  # FSDP2: reduce gradients once, at the last
            self.model.set_requires_gradient_sync(last)
        (loss / self.accum).backward()

    def step(self, discard: bool) -> tuple[float, bool]:
        if discard:
            self.optimizer.zero_grad(set_to_none=True)
            return float("nan"), False
        clip = self.job.optim.grad_clip
        stages = self.pipeline.group if self.pipeline is not None else None
        norm = clip_grad_norm(list(self.model.parameters()), clip if clip > 0 else float("inf"), stages)
        applied = math.isfinite(norm)
        if applied:
            self.optimizer.step()
            if self._fp8_scales:
                after_optimizer_step(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        return norm, applied

    def save(self, tmp: Path, on_done=None) -> None:
        """Write model and optimizer to ``tmp``; ``on_done()`` (collective) publishes it. With
        ``trainer.checkpoint.async_save`` the files are written in the background and ``on_done`` runs at the
        next ``save`` or ``wait``."""
        self.wait()
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer, options=FLAT)
        state = {"model": model_sd, "optim": optim_sd}
        if not self.job.trainer.checkpoint.async_save:
            dcp.save(state, checkpoint_id=str(tmp))
            if on_done:
                on_done()
            return
        if self._async_group is None:  # background collectives must not share the training loop's group
            self._async_group = dist.new_group(backend="gloo")
        future = dcp.async_save(state, checkpoint_id=str(tmp), process_group=self._async_group)
        self._pending = (future, on_done)

    def wait(self) -> None:
        """Finish (and publish) an asynchronous save in flight."""
        if self._pending is not None:
            future, on_done = self._pending
            self._pending = None
            future.result()
            if on_done:
                on_done()

    def load(self, path: Path) -> None:
        check_compatible(path, dcp_saved_shapes(path), model_shapes(self.job.model))
        options = FLAT if dcp_optimizer_flattened(path) else StateDictOptions()
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer, options=options)
        state = {"model": model_sd, "optim": optim_sd}
        try:
            dcp.load(state, checkpoint_id=str(path))
        except (Exception, CheckpointException) as err:  # noqa: BLE001 - damage surfaces as many exception types
            raise damaged(path, err) from err
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                       options=options)

    def weight_tensors(self):
        """(names, full tensor) per parameter, one at a time (collective): what a weight digest hashes."""
        if self.pipeline is not None:
            from kfm.train.parallel.pipeline import pipeline_tensors

            return pipeline_tensors(self.pipeline, self.job.model)
        return module_tensors(self.model)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Every weight, unsharded, on CPU, under the plain model's names (collective)."""
        if self.pipeline is not None:  # every stage's, gathered over the pipeline ranks
            sd = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True))
            parts: list = [None] * dist.get_world_size(self.pipeline.group)
            dist.all_gather_object(parts, {k: v.cpu() for k, v in sd.items()}, group=self.pipeline.group)
            return {k: v for part in parts for k, v in part.items()}
        sd = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k: v.clone() for k, v in sd.items()}


def build_engine(job: PretrainJob, info: DistInfo, accum: int, init_state: dict | None = None):
    """The engine of ``trainer.parallelism.backend``; ``init_state`` (a full state dict) replaces the random init."""
    if job.trainer.parallelism.backend == "deepspeed":
        from kfm.train.parallel.deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine(job, info, accum, init_state)
    return TorchEngine(job, info, accum, init_state)
