"""Parallelism applied to a plain model from outside, in one fixed order (as torchtitan does):

    activation checkpointing (none / full / selective) → torch.compile per block → data parallelism

Data parallelism is FSDP2 (``fully_shard`` per block, then the root), HSDP (the same on a 2-D
mesh: replicate across ``hsdp_replicas`` groups, shard within each), or DDP. For DeepSpeed the last
stage is ``deepspeed.initialize``, which needs the optimizer too: ``kfm.train.parallel.deepspeed_engine`` calls it
on the model returned here. Blocks are wrapped
in place, so parameter names, checkpoints and HF export stay those of the plain model.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from kfm.train.config import Backend, ParallelismConfig
from kfm.train.parallel.distributed import DTYPES, DistInfo


def blocks(model: nn.Module) -> list[tuple[nn.ModuleList, int]]:
    """(list, index) of every unit wrapped one by one: the transformer blocks, then the multi-token prediction
    modules (each a block with its norms and projection)."""
    units = [(model.layers, i) for i in range(len(model.layers))]
    mtp = getattr(model, "mtp", None)
    return units + ([(mtp.layers, k) for k in range(len(mtp.layers))] if mtp is not None else [])


def apply_activation_checkpointing(model: nn.Module, mode: str, every: int) -> None:
    """``full``: recompute every block's activations in the backward; ``selective``: every ``every``-th block."""
    if mode == "none":
        return
    for n, (units, i) in enumerate(blocks(model)):
        if mode == "full" or n % every == 0:
            units[i] = checkpoint_wrapper(units[i], preserve_rng_state=False)


def apply_compile(model: nn.Module) -> None:
    """Compile each block on its own (all blocks share one compiled graph)."""
    for units, i in blocks(model):
        units[i] = torch.compile(units[i], fullgraph=False)


def build_mesh(pc: ParallelismConfig, info: DistInfo):
    """The device mesh of the job, built once (``kfm.train.parallel.engine.build_engine``): 1-D ``shard`` for FSDP2,
    ``replicate x shard`` for HSDP; ``None`` where the backend needs none (DDP, DeepSpeed)."""
    device_type = info.device.type
    if pc.backend in (Backend.ddp, Backend.deepspeed):
        return None
    if pc.backend != Backend.hsdp:
        return init_device_mesh(device_type, (info.world,), mesh_dim_names=("shard",))
    replicas = pc.hsdp_replicas or max(1, info.world // int(os.environ.get("LOCAL_WORLD_SIZE", info.world)))
    if info.world % replicas:
        raise ValueError(f"trainer.parallelism.hsdp_replicas={replicas} does not divide the {info.world} ranks")
    return init_device_mesh(device_type, (replicas, info.world // replicas), mesh_dim_names=("replicate", "shard"))


def apply_data_parallel(model: nn.Module, pc: ParallelismConfig, info: DistInfo, mesh) -> nn.Module:
    if pc.backend == Backend.deepspeed:
        return model  # sharded by deepspeed.initialize (kfm.train.parallel.deepspeed_engine)
    if pc.backend == Backend.ddp:
        ids = [info.device.index] if info.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    policy = MixedPrecisionPolicy(param_dtype=DTYPES[pc.param_dtype], reduce_dtype=torch.float32)
    # Pinned host memory speeds up copies to and from a GPU (and needs one to exist).
    offload = CPUOffloadPolicy(pin_memory=info.device.type == "cuda") if pc.cpu_offload else OffloadPolicy()
    for units, i in blocks(model):
        fully_shard(units[i], mesh=mesh, mp_policy=policy, offload_policy=offload)
    fully_shard(model, mesh=mesh, mp_policy=policy, offload_policy=offload)
    return model


def parallelize(model: nn.Module, pc: ParallelismConfig, info: DistInfo, mesh=None) -> nn.Module:
    """Activation checkpointing → compile → data parallelism, per ``trainer.parallelism``, on ``mesh``
    (``build_mesh``); returns the model to train."""
    apply_activation_checkpointing(model, pc.activation_checkpointing, pc.ac_every)
    if pc.compile:
        apply_compile(model)
    return apply_data_parallel(model, pc, info, mesh)
