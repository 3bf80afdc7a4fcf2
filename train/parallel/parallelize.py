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

from kfm.train.config import TrainerConfig
from kfm.train.parallel.distributed import DTYPES, DistInfo


def apply_activation_checkpointing(model: nn.Module, mode: str, every: int) -> None:
    """``full``: recompute every block's activations in the backward; ``selective``: every ``every``-th block."""
    if mode == "none":
        return
    for i, block in enumerate(model.layers):
        if mode == "full" or i % every == 0:
            model.layers[i] = checkpoint_wrapper(block, preserve_rng_state=False)


def apply_compile(model: nn.Module) -> None:
    """Compile each block on its own (all blocks share one compiled graph)."""
    for i, block in enumerate(model.layers):
        model.layers[i] = torch.compile(block, fullgraph=False)


def data_parallel_mesh(tc: TrainerConfig, info: DistInfo):
    """The mesh for FSDP2 (1-D) or HSDP (replicate x shard)."""
    device_type = info.device.type
    if tc.backend != "hsdp":
        return init_device_mesh(device_type, (info.world,), mesh_dim_names=("shard",))
    replicas = tc.hsdp_replicas or max(1, info.world // int(os.environ.get("LOCAL_WORLD_SIZE", info.world)))
    if info.world % replicas:
        raise ValueError(f"trainer.hsdp_replicas={replicas} does not divide the {info.world} ranks")
    return init_device_mesh(device_type, (replicas, info.world // replicas), mesh_dim_names=("replicate", "shard"))


def apply_data_parallel(model: nn.Module, tc: TrainerConfig, info: DistInfo) -> nn.Module:
    if tc.backend == "deepspeed":
        return model  # sharded by deepspeed.initialize (kfm.train.parallel.deepspeed_engine)
    if tc.backend == "ddp":
        ids = [info.device.index] if info.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    policy = MixedPrecisionPolicy(param_dtype=DTYPES[tc.param_dtype], reduce_dtype=torch.float32)
    # Pinned host memory speeds up copies to and from a GPU (and needs one to exist).
    offload = CPUOffloadPolicy(pin_memory=info.device.type == "cuda") if tc.cpu_offload else OffloadPolicy()
    mesh = data_parallel_mesh(tc, info)
    for block in model.layers:
        fully_shard(block, mesh=mesh, mp_policy=policy, offload_policy=offload)
    fully_shard(model, mesh=mesh, mp_policy=policy, offload_policy=offload)
    return model


def parallelize(model: nn.Module, tc: TrainerConfig, info: DistInfo) -> nn.Module:
    """Activation checkpointing → compile → data parallelism, per ``trainer.*``; returns the model to train."""
    apply_activation_checkpointing(model, tc.activation_checkpointing, tc.ac_every)
    if tc.compile:
        apply_compile(model)
    return apply_data_parallel(model, tc, info)
