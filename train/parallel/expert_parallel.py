"""Expert parallelism: each MoE layer's routed experts sharded over the ``ep`` ranks, tokens sent to the rank that
holds their expert and back (dropless all-to-all dispatch and combine), applied from outside the model.

The ``ep`` ranks are data-parallel ranks too (as in torchtitan and Megatron-Core, expert parallelism borrows from
data parallelism): each reads its own samples and routes its own tokens. ``kfm.model.moe.MoE`` sorts a layer's
(token, choice) pairs by expert and calls its ``Experts`` module with the sorted rows and the rows per expert;
here that call is wrapped (``distribute_module``'s input and output functions):

    dispatch  counts per expert exchanged (all-to-all of E numbers), rows per destination rank read on the host
              (one synchronisation per layer: the sizes of the variable all-to-all), the rows sent to the ranks
              that hold their experts, and the received rows (ordered by source rank, then expert) reordered to
              expert-major, so the experts run one grouped GEMM over their own rows as without parallelism;
    combine   the inverse reordering, then the reverse all-to-all: each row returns to its token's rank, in the
              order ``MoE`` unpermutes.

The all-to-alls are differentiable (the backward sends the gradients back the same way). The expert weights
(E, ...) become ``Shard(0)`` DTensors on the ``ep`` mesh (so checkpoints hold the global tensors and load under any
layout); during the wrapped call the module sees its local experts as plain tensors. Expert weights are then
sharded by FSDP2 over the remaining data-parallel ranks (``efsdp`` = dp / ep), the rest of the model over all
data-parallel ranks; an expert's gradient already sums the tokens of its ``ep`` group, so it is scaled by 1/ep
before FSDP2 averages it over ``efsdp``: the mean over all data-parallel ranks, as the dense gradients get. (FSDP2's
``set_gradient_divide_factor`` would do the same with a pre-multiplied reduction, which gloo lacks.)
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import nn
from torch.distributed.tensor import DTensor, Shard, distribute_module, distribute_tensor

from kfm.model.moe import moe_layers

WEIGHTS = ("w13", "w2")
"""The stacked expert weights of ``kfm.model.moe.Experts`` (experts first)."""


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the gradient multiplied by ``scale``."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def _shard_experts(name: str, module: nn.Module, mesh) -> None:
    if name:  # only the Experts module itself holds expert weights
        return
    for key in WEIGHTS:
        param = module._parameters[key]
        module.register_parameter(key, nn.Parameter(distribute_tensor(param, mesh, [Shard(0)])))


def _dispatch(module: nn.Module, inputs: tuple, mesh) -> tuple:
    """The sorted rows of this rank's tokens → the rows of this rank's experts from every rank, expert-major."""
    xp, counts, *rest = inputs
    group, ranks = mesh.get_group(), mesh.size()
    counts = counts.to(torch.long)
    local_experts = counts.numel() // ranks
    received = torch.empty_like(counts)
    dist.all_to_all_single(received, counts, group=group)  # received[src * L + l]: rows of src for my expert l
    received = received.view(ranks, local_experts)
    sizes = torch.stack([counts.view(ranks, local_experts).sum(1), received.sum(1)]).tolist()  # the host sync
    rows = funcol.all_to_all_single_autograd(xp, sizes[1], sizes[0], group)
    # rows arrive source-major ((src, l) blocks in order); the grouped GEMM wants them expert-major ((l, src))
    block = torch.repeat_interleave(torch.arange(received.numel(), device=xp.device), received.reshape(-1),
                                    output_size=rows.shape[0])
    order = torch.argsort((block % local_experts) * ranks + block // local_experts, stable=True)
    module._ep_state = (order, sizes)
    for key in WEIGHTS:  # the local experts as plain tensors for the wrapped call (gradients flow to the DTensor)
        module.__dict__[key] = _ScaleGradient.apply(module._parameters[key].to_local(), 1.0 / ranks)
    return (rows[order], received.sum(0), *rest)


def _combine(module: nn.Module, out: torch.Tensor, mesh) -> torch.Tensor:
    """This rank's expert outputs back to the ranks and rows their tokens came from."""
    order, sizes = module._ep_state
    del module._ep_state
    for key in WEIGHTS:
        del module.__dict__[key]
    back = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
    return funcol.all_to_all_single_autograd(out[back], sizes[0], sizes[1], mesh.get_group())


def apply_expert_parallel(model: nn.Module, ep_mesh) -> None:
    """Every MoE layer's experts sharded over ``ep_mesh`` with all-to-all dispatch and combine."""
    for layer in moe_layers(model):
        distribute_module(layer.experts, ep_mesh, _shard_experts, _dispatch, _combine)


def expert_modules(model: nn.Module) -> list[nn.Module]:
    return [layer.experts for layer in moe_layers(model)]


def is_expert_sharded(param: torch.Tensor) -> bool:
    return isinstance(param, DTensor) and "ep" in (param.device_mesh.mesh_dim_names or ())
