"""Parallelism applied to a plain model from outside, in one fixed order (as torchtitan does):

    tensor parallelism → activation checkpointing (none / full / selective) → torch.compile per block →
    data parallelism

Tensor parallelism (``trainer.parallelism.tp``) follows Megatron-LM's plan with DTensor's ``parallelize_module``:
in every block the query/key/value projections (latent attention: the full-rank query or the query
decompression, and the key/value decompression) and the feed-forward's gate and up projections are split by
output columns, the attention output and the feed-forward's down projection by input rows, so each rank computes
whole heads and a slice of the feed-forward width and one all-reduce per sublayer restores the residual stream.
Per-head QK-norms see only their rank's heads: their weights become replicated DTensors whose gradients DTensor
sums over the ranks; latent attention's rotated key, shared by all heads, has its gradient summed likewise.
Embeddings, block norms, the output projection and the loss stay replicated (every rank of a replica computes them
alike).

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
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, SequenceParallel, parallelize_module
from torch.nn.parallel import DistributedDataParallel

from kfm.train.config import Backend, ParallelismConfig
from kfm.train.parallel.distributed import DTYPES, DistInfo


def blocks(model: nn.Module) -> list[tuple[nn.ModuleList, int]]:
    """(list, index) of every unit wrapped one by one: the transformer blocks, then the multi-token prediction
    modules (each a block with its norms and projection)."""
    units = [(model.layers, i) for i in range(len(model.layers))]
    mtp = getattr(model, "mtp", None)
    return units + ([(mtp.layers, k) for k in range(len(mtp.layers))] if mtp is not None else [])


def tensor_parallel_plan(block: nn.Module) -> dict:
    """``parallelize_module``'s plan for one transformer block (dense feed-forward; GQA or latent attention)."""
    attn, col, row = block.attention, ColwiseParallel(), RowwiseParallel()
    if getattr(attn, "wkv_b", None) is not None:  # latent attention: the latents stay whole on every rank
        names = ["wkv_b", "wq" if attn.wq is not None else "wq_b"]
    else:
        names = ["wq", "wk", "wv"]
    plan = {f"attention.{n}": col for n in names} | {"attention.wo": row}
    for norm in ("q_norm", "k_norm"):
        if getattr(attn, norm, None) is not None and not hasattr(attn, "wkv_b"):
            plan[f"attention.{norm}"] = SequenceParallel(sequence_dim=2, use_local_output=True)  # a rank's heads
    return plan | {"feed_forward.w1": col, "feed_forward.w3": col, "feed_forward.w2": row}


class _SumGradient(torch.autograd.Function):
    """Identity forward; the gradient summed over a process group (Megatron-LM's "copy to the tensor-parallel
    region"): for a tensor every rank computes alike but each rank's heads consume only in part."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        torch.distributed.all_reduce(grad, group=ctx.group)
        return grad, None


def apply_tensor_parallel(model: nn.Module, tp_mesh) -> None:
    """Every block (a multi-token prediction module's block too) split over ``tp_mesh``."""
    group = tp_mesh.get_group()
    for units, i in blocks(model):
        block = getattr(units[i], "block", units[i])
        parallelize_module(block, tp_mesh, tensor_parallel_plan(block))
        shared_key = getattr(block.attention, "shared_key", None)  # latent attention's rotated key
        if shared_key is not None:
            shared_key.register_forward_hook(lambda module, args, out: _SumGradient.apply(out, group))


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
    """The device mesh of the job, built once (``kfm.train.parallel.engine.build_engine``): ``shard`` for FSDP2,
    ``replicate x shard`` for HSDP, each with a last ``tp`` dimension when ``trainer.parallelism.tp`` > 1 (a replica's
    ranks are neighbours: rank = data-parallel index * tp + tp index); ``None`` where the backend needs none (DDP,
    DeepSpeed)."""
    device_type = info.device.type
    if pc.backend in (Backend.ddp, Backend.deepspeed):
        return None
    dp = info.world // pc.tp
    dims = [(dp, "shard")]  # (size, name), outermost first
    if pc.backend == Backend.hsdp:  # by default one replica group per node
        per_node = max(int(os.environ.get("LOCAL_WORLD_SIZE", info.world)) // pc.tp, 1)
        replicas = pc.hsdp_replicas or max(1, dp // per_node)
        if dp % replicas:
            raise ValueError(f"trainer.parallelism.hsdp_replicas={replicas} does not divide the {dp} data-parallel "
                             "ranks")
        dims = [(replicas, "replicate"), (dp // replicas, "shard")]
    if pc.tp > 1:
        dims.append((pc.tp, "tp"))
    return init_device_mesh(device_type, tuple(size for size, _ in dims),
                            mesh_dim_names=tuple(name for _, name in dims))


def dp_mesh(mesh):
    """The data-parallel part of the job's mesh (what FSDP2/HSDP shard and replicate over)."""
    names = tuple(n for n in mesh.mesh_dim_names if n != "tp")
    if names == mesh.mesh_dim_names:
        return mesh
    return mesh[names] if len(names) > 1 else mesh[names[0]]


def apply_data_parallel(model: nn.Module, pc: ParallelismConfig, info: DistInfo, mesh) -> nn.Module:
    if pc.backend == Backend.deepspeed:
        return model  # sharded by deepspeed.initialize (kfm.train.parallel.deepspeed_engine)
    if pc.backend == Backend.ddp:
        ids = [info.device.index] if info.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    policy = MixedPrecisionPolicy(param_dtype=DTYPES[pc.param_dtype], reduce_dtype=torch.float32)
    # Pinned host memory speeds up copies to and from a GPU (and needs one to exist).
    offload = CPUOffloadPolicy(pin_memory=info.device.type == "cuda") if pc.cpu_offload else OffloadPolicy()
    mesh = dp_mesh(mesh)
    for units, i in blocks(model):
        fully_shard(units[i], mesh=mesh, mp_policy=policy, offload_policy=offload)
    fully_shard(model, mesh=mesh, mp_policy=policy, offload_policy=offload)
    return model


def parallelize(model: nn.Module, pc: ParallelismConfig, info: DistInfo, mesh=None) -> nn.Module:
    """Tensor parallelism → activation checkpointing → compile → data parallelism, per ``trainer.parallelism``, on
    ``mesh`` (``build_mesh``); returns the model to train."""
    if pc.tp > 1:
        apply_tensor_parallel(model, mesh["tp"])
    apply_activation_checkpointing(model, pc.activation_checkpointing, pc.ac_every)
    if pc.compile:
        apply_compile(model)
    return apply_data_parallel(model, pc, info, mesh)
