"""Expert parallelism on gloo CPU processes: the experts of the debug MoE model split over 2 ranks (EP2, and FSDP2 x
EP2 on 4, with activation checkpointing and torch.compile) train as one process does (every step's loss within rel 1e-5, fp32, final weights within 1e-5); the
all-to-all dispatch and combine equal the unsplit layer even when a rank's experts receive no token; an EP2
checkpoint resumes under plain FSDP2 (EP1); bad layouts are refused naming the numbers."""

import shutil

import pytest
import torch

from dataclasses import replace

from kfm.train.config import ParallelismConfig
from kfm.train.parallel.layout import check_layout
from tests.helpers import assert_same_run, assert_values_equal, assert_weights_close, layout_run, moe_model_cfg, \
    run_distributed

MOE = replace(moe_model_cfg(), vocab_size=768)
"""The debug MoE model: a dense first layer, then 8 experts (top-2 of 2 groups, sigmoid, a shared expert, the bias)."""


def test_ep2_equals_one_process_and_resumes_under_ep1(run_dir):
    data = run_dir / "data"
    reference = layout_run(run_dir / "one", data, MOE, 1)  # 2 micro batches of 4
    ep2 = layout_run(run_dir / "ep2", data, MOE, 2, ep=2)
    assert_same_run(ep2, reference, validation=False)  # 2 data-parallel ranks: a validation batch of 8
    from safetensors.torch import load_file  # the checkpoint read back in one process, as HF export does

    from kfm.train.cli.consolidate import consolidate

    ckpt = run_dir / "ep2" / "checkpoints" / "step_0000006"
    saved = load_file(consolidate(ckpt, run_dir / "ep2" / "model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in ep2.weights.items()) and saved.keys() == ep2.weights.keys()
    # resharding: EP2's step-3 checkpoint resumed without expert parallelism (FSDP2 over 2 ranks)
    shutil.copytree(run_dir / "ep2", run_dir / "ep1", ignore=shutil.ignore_patterns("step_0000006"))
    (run_dir / "ep1" / "metrics.jsonl").unlink()
    ep1 = layout_run(run_dir / "ep1", data, MOE, 2)
    assert_values_equal(ep1.losses, reference.losses[3:])
    assert_weights_close(ep1.weights, reference.weights)


@pytest.mark.slow  # ~25 s; EP2 itself runs in make test above
def test_fsdp2_x_ep2_on_four_processes_with_checkpointing_and_compile_equals_one_process(run_dir):
    """Experts over 2 ranks, their weights sharded by FSDP2 over the other 2; with activation checkpointing (the
    all-to-alls rerun in the backward) and torch.compile per block."""
    data = run_dir / "data"
    reference = layout_run(run_dir / "one", data, MOE, 1)
    assert_same_run(layout_run(run_dir / "fsdp2xep2", data, MOE, 4, local_batch=2, ep=2,
                               activation_checkpointing="full", compile=True), reference, validation=False)


def moe_layer_split_over_two_ranks(skew: bool):
    """(max output difference, expert gradients' relative difference, local experts, rows this rank's experts got)
    of one MoE layer with EP2 against the unsplit layer on the same inputs."""
    import copy

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from kfm.model.config import ModelRuntime
    from kfm.model.layers import KernelChoice
    from kfm.model.moe import MoE
    from kfm.train.parallel.expert_parallel import apply_expert_parallel

    rank = dist.get_rank()
    torch.manual_seed(0)
    layer = MoE(MOE, ModelRuntime(), KernelChoice(), 1)
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.2)
    if skew:  # every token picks experts 0-3 (group 0): all rows go to rank 0, rank 1's experts get none
        layer.expert_bias.copy_(torch.tensor([10.0] * 4 + [0.0] * 4))
    reference = copy.deepcopy(layer)
    apply_expert_parallel(layer, init_device_mesh("cpu", (2,), mesh_dim_names=("ep",)))
    received = []
    layer.experts.register_forward_pre_hook(lambda m, args: received.append(int(args[1].sum())))
    x = torch.randn(3, 5 + 4 * rank, 32, generator=torch.Generator().manual_seed(rank), requires_grad=True)
    out, ref = layer(x), reference(x)
    (out * out).sum().backward()
    (ref * ref).sum().backward()
    grad_diff = 0.0
    for key in ("w13", "w2"):
        full = getattr(reference.experts, key).grad.clone()
        dist.all_reduce(full)  # the experts see both ranks' tokens: their gradient, 1/ep of the sum
        mine = getattr(layer.experts, key).grad.to_local()
        expected = full.chunk(2)[rank] / 2
        grad_diff = max(grad_diff, ((mine - expected).norm() / expected.norm().clamp(min=1e-12)).item())
    return ((out - ref).abs().max().item(), grad_diff, layer.experts.w13.to_local().shape[0], received[0])


@pytest.mark.parametrize("skew", [False, True], ids=["spread", "one_rank_gets_no_rows"])
def test_dispatch_and_combine_equal_the_unsplit_layer(skew):
    results = run_distributed(moe_layer_split_over_two_ranks, 2, skew)
    for out_diff, grad_diff, local_experts, _ in results:
        assert out_diff < 1e-5 and grad_diff < 1e-5 and local_experts == 4
    if skew:
        assert results[1][3] == 0 and results[0][3] == (3 * 5 + 3 * 9) * 2  # every (token, choice) pair on rank 0


@pytest.mark.parametrize("world, change, message", [
    (4, dict(ep=3), r"ep=3 must divide the 4 data-parallel ranks and model.moe.n_experts=8: use ep in 1, 2, 4"),
    (2, dict(ep=2, backend="hsdp"), r"ep=2 runs with backend fsdp2 .* not hsdp"),
    (2, dict(ep=2, tp=2), r"no tensor-parallel plan yet"),
])
def test_bad_expert_layouts_are_refused_naming_the_numbers(world, change, message):
    with pytest.raises(ValueError, match=message):
        check_layout(ParallelismConfig(**change), MOE, world)
    with pytest.raises(ValueError, match="has no mixture-of-experts layers; use ep=1"):
        check_layout(ParallelismConfig(ep=2), replace(MOE, moe=type(MOE.moe)()), 2)
    assert check_layout(ParallelismConfig(ep=2), MOE, 4).efsdp == 2
