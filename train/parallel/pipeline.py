"""Pipeline parallelism: the model's layers split into consecutive stages over the ``pp`` ranks, the step's micro
batches flowing through them by a ``torch.distributed.pipelining`` schedule.

The plain model (built on the meta device) is cut into ``pp x pp_stages_per_rank`` stages of equal depth; stage
``s`` lives on pipeline rank ``s % pp`` (round-robin, the layout the interleaved schedules expect). A ``Stage``
holds its blocks under their names in the plain model (``layers.<i>``), the first also the embedding, the last
the final norm and output projection, so checkpoints and exports see the plain model's names whatever the split.
Each stage is parallelised like a whole model (tensor parallelism, activation checkpointing, compile, FSDP2 over
the data-parallel ranks of that stage), then materialised; the initial weights are drawn for the whole model in
the usual order, each rank keeping its stages' tensors, so they equal the one-process model's.

Micro batches carry only tensors split along the batch (the tokens, their positions, the targets): each stage
rebuilds the rotary tables and the document boundaries from the positions (``documents_from_positions``). The
last stage computes the chunked cross-entropy itself (the full logits never exist) and returns the micro batch's
mean loss; the schedule's loss function divides it by the number of micro batches, so the gradients are the
step's mean, as with gradient accumulation.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor
from torch.distributed.pipelining import PipelineStage
from torch.distributed.pipelining.schedules import (Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B,
                                                    ScheduleInterleavedZeroBubble)

from kfm.model import Transformer
from kfm.model.attention import documents_from_positions
from kfm.model.rope import Rotary, rope_tables
from kfm.train.parallel.distributed import DTYPES
from kfm.train.parallel.parallelize import assign_local_shard, parallelize

SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B, "interleaved_1f1b": ScheduleInterleaved1F1B,
             "interleaved_zb": ScheduleInterleavedZeroBubble}


def stage_layers(n_layers: int, stages: int) -> list[range]:
    """The blocks of each stage: ``stages`` consecutive runs of equal depth."""
    depth = n_layers // stages
    return [range(s * depth, (s + 1) * depth) for s in range(stages)]


def local_stages(pp_rank: int, pp: int, per_rank: int) -> list[int]:
    """The stages pipeline rank ``pp_rank`` holds (round-robin)."""
    return [pp_rank + k * pp for k in range(per_rank)]


class Stage(nn.Module):
    """Stage ``index`` of ``count`` of a ``Transformer``: (the embedding,) its blocks, (the final norm and output
    projection). ``forward(x, position_ids, targets)``: tokens (first stage) or hidden states → hidden states, or
    on the last stage the mean loss of ``targets``."""

    def __init__(self, model: Transformer, index: int, count: int, document_masking: bool = True) -> None:
        super().__init__()
        self.index, self.first, self.last = index, index == 0, index == count - 1
        self.document_masking = document_masking
        self.z_loss, self.loss_chunk = 0.0, None
        """Set by the trainer (the training loss's z-loss; validation uses none)."""
        if self.first:
            self.tok_embeddings = model.tok_embeddings
        self.layers = nn.ModuleDict({str(i): model.layers[i]
                                     for i in stage_layers(model.cfg.n_layers, count)[index]})
        if self.last:
            self.norm, self.output = model.norm, model.output
        self._model = (model,)  # not a submodule: its other stages stay on the meta device
        cos, sin = rope_tables(model.cfg.rope_dim, model.cfg.max_seq_len, model.cfg.rope, device=model.rope_cos.device)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def init_rope(self) -> None:
        cfg = self._model[0].cfg
        cos, sin = rope_tables(cfg.rope_dim, cfg.max_seq_len, cfg.rope, device=self.rope_cos.device)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, targets: torch.Tensor | None = None
                ) -> torch.Tensor:
        h = self.tok_embeddings(x) if self.first else x
        batch, seq = h.shape[:2]
        if self.document_masking:
            rotary, docs = Rotary(self.rope_cos, self.rope_sin, position_ids, seq), documents_from_positions(position_ids)
        else:
            rotary, docs = Rotary(self.rope_cos, self.rope_sin, None, seq), None
        for layer in self.layers.values():
            h = layer(h, rotary, docs)
        if not self.last:
            return h
        return self._model[0].head_loss(self.norm(h), targets, self.z_loss, self.loss_chunk)


class PipelineParts(nn.Module):
    """This rank's stages seen as one module with the plain model's parameter names (what the optimizer,
    checkpoints and weight digests walk)."""

    def __init__(self, stages: list[Stage]) -> None:
        super().__init__()
        self.stages = tuple(stages)
        layers = nn.ModuleDict()
        for stage in stages:
            if stage.first:
                self.tok_embeddings = stage.tok_embeddings
            for name, block in stage.layers.items():
                layers[name] = block
            if stage.last:
                self.norm, self.output = stage.norm, stage.output
        self.layers = layers

    @property
    def holds_loss(self) -> bool:
        return self.stages[-1].last


class Pipeline:
    """The schedule of this rank's stages over the ``pp`` process group: ``step`` (forward and backward of a
    step's micro batches) and ``evaluate`` (forward only, one batch)."""

    def __init__(self, parts: PipelineParts, schedule: str, microbatches: int, group, device,
                 compute_dtype: torch.dtype) -> None:
        self.parts, self.group, self.device, self.compute_dtype = parts, group, device, compute_dtype
        self.dim = parts.stages[0]._model[0].cfg.dim
        self.pp = dist.get_world_size(group)
        self.count = self.pp * len(parts.stages)
        stages = [PipelineStage(s, s.index, self.count, device, group=group) for s in parts.stages]
        cls = SCHEDULES[schedule]

        def loss_fn(loss: torch.Tensor, _target) -> torch.Tensor:  # the last stage returns the mean loss already
            return loss / microbatches

        self.schedule = cls(stages if len(stages) > 1 else stages[0], microbatches, loss_fn=loss_fn,
                            scale_grads=False)

    def step(self, inputs: torch.Tensor, position_ids: torch.Tensor, targets: torch.Tensor, z_loss: float
             ) -> torch.Tensor:
        """Forward and backward of the micro batches stacked in ``inputs`` (rows); the mean loss on the last
        stage's ranks, zero elsewhere (a device tensor: no synchronisation)."""
        for stage in self.parts.stages:
            stage.z_loss = z_loss
        losses: list = []
        args = (inputs,) if self.parts.stages[0].first else ()
        self.schedule.step(*args, target=targets, losses=losses, return_outputs=False, position_ids=position_ids,
                           targets=targets)
        if not self.parts.holds_loss:
            return torch.zeros((), device=self.device)
        return torch.stack([loss.detach() for loss in losses]).sum().float()

    @torch.no_grad()
    def evaluate(self, inputs: torch.Tensor, position_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        """The mean loss of one batch on the last stage's ranks (None elsewhere), forward only: each stage in
        order receives the previous stage's hidden states from its rank and sends its own to the next."""
        me = dist.get_rank(self.group)
        ranks = dist.get_process_group_ranks(self.group)
        loss, h = None, None
        for stage in self.parts.stages:
            stage.z_loss = 0.0
        for s in range(self.count):
            owner = s % self.pp
            if owner != me:
                continue
            stage = next(st for st in self.parts.stages if st.index == s)
            if s > 0:
                h = torch.empty(*inputs.shape, self.dim, dtype=self.compute_dtype, device=self.device)
                dist.recv(h, src=ranks[(s - 1) % self.pp], group=self.group)
            out = stage(inputs.to(self.device) if s == 0 else h, position_ids, targets)
            if stage.last:
                loss = out
            else:
                dist.send(out.contiguous(), dst=ranks[(s + 1) % self.pp], group=self.group)
        return loss


def build_pipeline(job, info, mesh, microbatches: int) -> Pipeline:
    """This rank's stages of ``job.model``, parallelised and initialised (the weights of the whole model drawn in
    order, each rank keeping its own), and their schedule."""

    pc, tc = job.trainer.parallelism, job.trainer
    with torch.device("meta"):
        model = Transformer(job.model, job.model_runtime)
    pp_mesh = mesh["pp"]
    count = pc.pp * pc.pp_stages_per_rank
    stages = [Stage(model, s, count, tc.document_masking)
              for s in local_stages(pp_mesh.get_local_rank(), pc.pp, pc.pp_stages_per_rank)]
    for stage in stages:
        parallelize(stage, pc, info, mesh)
        stage.to_empty(device=info.device)
        stage.init_rope()
    model.init_weights(seed=tc.seed, assign=_assign_materialised)
    return Pipeline(PipelineParts(stages), pc.pp_schedule.value, microbatches, pp_mesh.get_group(), info.device,
                    DTYPES[pc.param_dtype])


def _assign_materialised(param: torch.Tensor, full: torch.Tensor) -> None:
    """Keep ``full`` where this rank holds the parameter (its shard of it); other stages' stay on the meta device."""
    if not param.is_meta:
        assign_local_shard(param, full)


def pipeline_tensors(pipeline: Pipeline, cfg):
    """(names, full tensor) per parameter and persistent buffer of the whole model, in the plain model's order, on
    every rank (collective): each stage gathers its own tensors, then its rank broadcasts them over the pipeline
    group. What a weight digest hashes, whatever the split."""
    from kfm.train.provenance.digests import parameter_groups

    with torch.device("meta"):
        plain = parameter_groups(Transformer(cfg))
    mine = {names[0]: t for names, t in parameter_groups(pipeline.parts)}
    ranks = dist.get_process_group_ranks(pipeline.group)
    depth = cfg.n_layers // pipeline.count
    for names, meta in plain:
        name = names[0]
        if name.startswith("layers."):
            stage = int(name.split(".")[1]) // depth
        else:
            stage = 0 if name.startswith("tok_embeddings.") else pipeline.count - 1
        owner = ranks[stage % pipeline.pp]
        if name in mine:
            t = mine[name]
            t = (t.full_tensor() if isinstance(t, DTensor) else t).detach().contiguous()
        else:
            t = torch.empty(meta.shape, dtype=meta.dtype, device=pipeline.device)
        dist.broadcast(t, src=owner, group=pipeline.group)
        yield names, t
