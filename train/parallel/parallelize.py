"""Parallelism applied to a plain model from outside, in one fixed order (as torchtitan does):

    FP8 → tensor parallelism → expert parallelism → activation checkpointing (none / full / selective) →
    torch.compile per block → data parallelism

FP8 (``trainer.parallelism.fp8``, torchao's float8 / MXFP8 training): ``kfm.train.parallel.fp8``.
Expert parallelism (``trainer.parallelism.ep``): ``kfm.train.parallel.expert_parallel``; context parallelism
(``trainer.parallelism.cp``, each attention layer's core replaced): ``kfm.train.parallel.context_parallel``.

Tensor parallelism (``trainer.parallelism.tp``) follows Megatron-LM's plan with DTensor's ``parallelize_module``:
in every block the query/key/value projections (latent attention: the full-rank query or the query
decompression, and the key/value decompression) and the feed-forward's gate and up projections are split by
output columns, the attention output and the feed-forward's down projection by input rows, so each rank computes
whole heads and a slice of the feed-forward width and one all-reduce per sublayer restores the residual stream.
Per-head QK-norms see only their rank's heads: their weights become replicated DTensors whose gradients DTensor
sums over the ranks; latent attention's rotated key, shared by all heads, has its gradient summed likewise.
The embedding and the output projection are split by vocabulary rows (tied, one weight for both) and the
cross-entropy is computed across the ranks without whole rows of logits (``kfm.train.parallel.loss_parallel``);
the block norms stay replicated (every rank of a replica computes them alike). With ``trainer.parallelism.sequence_parallel`` (Megatron-LM's sequence parallelism, Korthikanti et al.
2022) the residual stream and the block norms are split by sequence position instead: each all-reduce becomes a
reduce-scatter after the sublayer and an all-gather before the next, so the activations between sublayers take
1/tp of the memory; the final norm's output is gathered for the output projection and the loss.

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
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import (ColwiseParallel, PrepareModuleInput, RowwiseParallel, SequenceParallel,
                                               parallelize_module)
from torch.nn.parallel import DistributedDataParallel

from kfm.train.config import Backend, ParallelismConfig
from kfm.train.parallel.context_parallel import apply_context_parallel
from kfm.train.parallel.distributed import DTYPES, DistInfo
from kfm.train.parallel.expert_parallel import apply_expert_parallel, expert_modules
from kfm.train.parallel.fp8 import convert_to_fp8, fp8_device_error
from kfm.train.parallel.loss_parallel import VocabParallelLoss


def assign_local_shard(param: torch.Tensor, full: torch.Tensor) -> None:
    """Store this rank's part of ``full`` (drawn identically on every rank) in a possibly sharded parameter."""
    if isinstance(param, DTensor):
        full = distribute_tensor(full.to(param.device), param.device_mesh, param.placements, src_data_rank=None)
    param.copy_(full)


def blocks(model: nn.Module) -> list[tuple[nn.Module, int | str]]:
    """(container, key) of every unit wrapped one by one: the transformer blocks (a model's list, or a pipeline
    stage's dict keyed by layer number), then the multi-token prediction modules (each a block with its norms and
    projection)."""
    layers = model.layers
    units = [(layers, k) for k in (layers.keys() if isinstance(layers, nn.ModuleDict) else range(len(layers)))]
    mtp = getattr(model, "mtp", None)
    return units + ([(mtp.layers, k) for k in range(len(mtp.layers))] if mtp is not None else [])


def tensor_parallel_plan(block: nn.Module, sequence_parallel: bool = False) -> dict:
    """``parallelize_module``'s plan for one transformer block (dense feed-forward; GQA or latent attention).

    With ``sequence_parallel`` the block's input and output are DTensors sharded by sequence position
    (``Shard(1)``): the block norms run on a rank's positions (their weights replicated DTensors), each sublayer
    all-gathers its input and its row-parallel output is reduce-scattered back to positions."""
    attn = block.attention
    if getattr(attn, "wkv_b", None) is not None:  # latent attention: the latents stay whole on every rank
        names = ["wkv_b", "wq" if attn.wq is not None else "wq_b"]
    else:
        names = ["wq", "wk", "wv"]
    col = ColwiseParallel()
    row = RowwiseParallel(output_layouts=Shard(1), use_local_output=False) if sequence_parallel else RowwiseParallel()
    plan = {f"attention.{n}": col for n in names} | {"attention.wo": row}
    for norm in ("q_norm", "k_norm"):
        if getattr(attn, norm, None) is not None and not hasattr(attn, "wkv_b"):
            plan[f"attention.{norm}"] = SequenceParallel(sequence_dim=2, use_local_output=True)  # a rank's heads
    plan |= {"feed_forward.w1": col, "feed_forward.w3": col, "feed_forward.w2": row}
    if sequence_parallel:
        def gather(others: int) -> PrepareModuleInput:  # the hidden states whole; rotary tables, documents as given
            return PrepareModuleInput(input_layouts=(Shard(1),) + (None,) * others,
                                      desired_input_layouts=(Replicate(),) + (None,) * others, use_local_output=True)

        norms = SequenceParallel(use_local_output=False)
        plan |= {"attention_norm": norms, "ffn_norm": norms, "attention": gather(2), "feed_forward": gather(0)}
    return plan


def _to_positions(mesh):
    """A forward pre-hook: a plain tensor (batch, seq, dim) that every rank holds whole becomes the rank's
    sequence positions as a ``Shard(1)`` DTensor (no communication; its gradient is all-gathered)."""

    def hook(module, args):
        x, *rest = args
        if isinstance(x, DTensor):
            return None
        return (DTensor.from_local(x, mesh, [Replicate()], run_check=False).redistribute(mesh, [Shard(1)]), *rest)

    return hook


def _to_whole(module, args, out):
    """A forward hook: a ``Shard(1)`` DTensor back to the whole plain tensor on every rank (all-gather)."""
    return out.redistribute(out.device_mesh, [Replicate()]).to_local() if isinstance(out, DTensor) else out


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


def apply_tensor_parallel(model: nn.Module, tp_mesh, sequence_parallel: bool = False) -> None:
    """Every block (a multi-token prediction module's block too) split over ``tp_mesh``.

    With ``sequence_parallel``, the residual stream is sharded by position from the first block's input (the
    embedding's output, split without communication) to the final norm, whose output is all-gathered for the
    output projection and the loss; a multi-token prediction block shards its input and gathers its output."""
    group = tp_mesh.get_group()
    for units, i in blocks(model):
        block = getattr(units[i], "block", units[i])
        parallelize_module(block, tp_mesh, tensor_parallel_plan(block, sequence_parallel))
        if sequence_parallel:
            block.register_forward_pre_hook(_to_positions(tp_mesh))
            if block is not units[i]:  # a multi-token prediction module: its norms and projection see whole tensors
                block.register_forward_hook(_to_whole)
        shared_key = getattr(block.attention, "shared_key", None)  # latent attention's rotated key
        if shared_key is not None:
            shared_key.register_forward_hook(lambda module, args, out: _SumGradient.apply(out, group))
    if sequence_parallel and hasattr(model, "norm"):
        parallelize_module(model.norm, tp_mesh, SequenceParallel(use_local_output=False))
        model.norm.register_forward_hook(_to_whole)
    apply_vocab_parallel(model, tp_mesh)


def apply_vocab_parallel(model: nn.Module, tp_mesh) -> None:
    """The embedding and the output projection split by vocabulary rows over ``tp_mesh`` (``Shard(0)``): the
    embedding's lookups summed over the ranks (with ``sequence_parallel`` the first block then keeps its positions),
    the loss computed without any rank holding a whole row of logits (``kfm.train.parallel.loss_parallel``); logits
    asked for directly are gathered. A pipeline stage holds either or neither."""
    tied = getattr(model, "output", None) is not None and getattr(model, "tok_embeddings", None) is not None \
        and model.output.weight is model.tok_embeddings.weight
    if getattr(model, "tok_embeddings", None) is not None:  # whole rows out: multi-token prediction reads them too
        parallelize_module(model.tok_embeddings, tp_mesh, RowwiseParallel(input_layouts=Replicate()))
    if getattr(model, "output", None) is not None:
        parallelize_module(model.output, tp_mesh, ColwiseParallel(output_layouts=Replicate()))
        if tied:  # one parameter again (each plan wrapped the shared weight in a parameter of its own)
            model.output.weight = model.tok_embeddings.weight
        owner = model._model[0] if hasattr(model, "_model") else model  # a pipeline stage's loss is its model's
        owner.loss_core = VocabParallelLoss(tp_mesh)


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
    ``replicate x shard`` for HSDP, each with a last ``tp`` dimension when ``trainer.parallelism.tp`` > 1 and a first
    ``pp`` dimension when ``trainer.parallelism.pp`` > 1 (rank = (pp index * dp + dp index) * tp + tp index);
    ``None`` where the backend needs none (DDP, DeepSpeed)."""
    device_type = info.device.type
    if pc.backend in (Backend.ddp, Backend.deepspeed):
        return None
    dp = info.world // (pc.tp * pc.pp * pc.cp)
    dims = [(dp, "shard")]  # (size, name), outermost first
    if pc.backend == Backend.hsdp:  # by default one replica group per node
        per_node = max(int(os.environ.get("LOCAL_WORLD_SIZE", info.world)) // pc.tp, 1)
        replicas = pc.hsdp_replicas or max(1, dp // per_node)
        if dp % replicas:
            raise ValueError(f"trainer.parallelism.hsdp_replicas={replicas} does not divide the {dp} data-parallel "
                             "ranks")
        dims = [(replicas, "replicate"), (dp // replicas, "shard")]
    if pc.pp > 1:  # outermost: a stage's ranks are a contiguous block
        dims.insert(0, (pc.pp, "pp"))
    if pc.cp > 1:
        dims.append((pc.cp, "cp"))
    if pc.tp > 1:
        dims.append((pc.tp, "tp"))
    mesh = init_device_mesh(device_type, tuple(size for size, _ in dims), mesh_dim_names=tuple(name for _, name in dims))
    if pc.cp > 1:  # FSDP2 shards over the data- and context-parallel ranks together
        mesh[("shard", "cp")]._flatten("shard_cp")
    return mesh


def expert_mesh(mesh, ep: int):
    """The data-parallel ranks unflattened into ``efsdp x ep`` (neighbouring ranks share the experts), from the
    job's one mesh."""
    dp = dp_mesh(mesh)
    return dp._unflatten(0, (dp.size() // ep, ep), ("efsdp", "ep"))


def dp_mesh(mesh):
    """The data-parallel part of the job's mesh (what FSDP2/HSDP shard and replicate over)."""
    if "cp" in mesh.mesh_dim_names:
        return mesh["shard_cp"]
    names = tuple(n for n in mesh.mesh_dim_names if n not in ("tp", "pp"))
    if names == mesh.mesh_dim_names:
        return mesh
    return mesh[names] if len(names) > 1 else mesh[names[0]]


def apply_data_parallel(model: nn.Module, pc: ParallelismConfig, info: DistInfo, mesh, experts_mesh=None
                        ) -> nn.Module:
    """FSDP2 / HSDP / DDP (DeepSpeed: nothing here); expert weights, with ``experts_mesh`` (``expert_mesh``), sharded
    over its ``efsdp`` dimension."""
    if pc.backend == Backend.deepspeed:
        return model  # sharded by deepspeed.initialize (kfm.train.parallel.deepspeed_engine)
    if pc.backend == Backend.ddp:
        ids = [info.device.index] if info.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    policy = MixedPrecisionPolicy(param_dtype=DTYPES[pc.param_dtype], reduce_dtype=torch.float32)
    # Pinned host memory speeds up copies to and from a GPU (and needs one to exist).
    offload = CPUOffloadPolicy(pin_memory=info.device.type == "cuda") if pc.cpu_offload else OffloadPolicy()
    dp = dp_mesh(mesh)
    if experts_mesh is not None:  # the experts first: the blocks then shard what is left of them
        for experts in expert_modules(model):
            fully_shard(experts, mesh=experts_mesh["efsdp"], mp_policy=policy, offload_policy=offload)
    mesh = dp
    for units, i in blocks(model):
        fully_shard(units[i], mesh=mesh, mp_policy=policy, offload_policy=offload)
    fully_shard(model, mesh=mesh, mp_policy=policy, offload_policy=offload)
    return model


def parallelize(model: nn.Module, pc: ParallelismConfig, info: DistInfo, mesh=None) -> nn.Module:
    """FP8 → tensor parallelism → expert parallelism → activation checkpointing → compile → data parallelism,
    per ``trainer.parallelism``, on ``mesh`` (``build_mesh``); returns the model to train."""
    if pc.fp8 != "none":
        if not pc.fp8_emulate and (err := fp8_device_error(pc.fp8, info.device)):
            raise ValueError(err)
        convert_to_fp8(model, pc.fp8, fsdp_all_gather=pc.backend in ("fsdp2", "hsdp"), emulate=pc.fp8_emulate)
    if pc.tp > 1:
        apply_tensor_parallel(model, mesh["tp"], pc.sequence_parallel)
    if pc.cp > 1:
        apply_context_parallel(model, mesh["cp"])
    experts_mesh = expert_mesh(mesh, pc.ep) if pc.ep > 1 else None
    if experts_mesh is not None:
        apply_expert_parallel(model, experts_mesh["ep"])
    apply_activation_checkpointing(model, pc.activation_checkpointing, pc.ac_every)
    if pc.compile:
        apply_compile(model)
    return apply_data_parallel(model, pc, info, mesh, experts_mesh)
