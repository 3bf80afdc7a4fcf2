"""Tensor parallelism on gloo CPU processes: every step's loss equals the one-process run (fp32, rel 1e-5) and the
final weights gathered from the layout equal its weights, for grouped-query attention with QK-norm and for latent
attention, alone (TP2) and under FSDP2 (FSDP2 x TP2, 4 processes); checkpoints reshard between layouts; bad
layouts are refused before any process group starts, naming the numbers and layouts that work."""

import shutil

import pytest
import torch

from kfm.model import ModelConfig
from kfm.model.config import MTPConfig
from kfm.train.config import ParallelismConfig
from kfm.train.parallel.layout import check_layout
from tests.helpers import (assert_same_run, assert_values_equal, assert_weights_close, layout_run, make_job,
                           mla_model_cfg, moe_model_cfg, run_distributed)

GQA = ModelConfig(vocab_size=768, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, ffn_hidden_dim=96,
                  max_seq_len=64, qk_norm=True, norm_eps=1e-6, mtp=MTPConfig(depth=1))
MLA = mla_model_cfg(vocab_size=768, n_layers=2)


@pytest.mark.parametrize("model", [GQA, MLA], ids=["gqa_qknorm_mtp", "mla"])
def test_tp2_equals_one_process_and_its_checkpoint_resumes_under_fsdp2(model, run_dir):
    data = run_dir / "data"
    reference = layout_run(run_dir / "one", data, model, 1, global_batch=0)
    assert_same_run(layout_run(run_dir / "tp2", data, model, 2, global_batch=0, tp=2), reference)
    if model is GQA:  # sequence parallelism around GQA with QK-norm and an MTP block; latent attention: slow below
        assert_same_run(layout_run(run_dir / "tp2sp", data, model, 2, global_batch=0, tp=2, sequence_parallel=True),
                        reference)
    # resharding: the TP2 run's step-3 checkpoint resumed as FSDP2 over 2 ranks (2 samples each: the same global
    # batch) continues as the 1-process run
    shutil.copytree(run_dir / "tp2", run_dir / "resharded", ignore=shutil.ignore_patterns("step_0000006"))
    (run_dir / "resharded" / "metrics.jsonl").unlink()
    resharded = layout_run(run_dir / "resharded", data, model, 2, global_batch=0, local_batch=2)
    assert_values_equal(resharded.losses, reference.losses[3:])
    assert_weights_close(resharded.weights, reference.weights)


@pytest.mark.slow  # ~12 s; SP with GQA runs in make test above
def test_tp2_with_sequence_parallelism_equals_one_process_for_latent_attention(run_dir):
    reference = layout_run(run_dir / "one", run_dir / "data", MLA, 1, global_batch=0)
    assert_same_run(layout_run(run_dir / "tp2sp", run_dir / "data", MLA, 2, global_batch=0, tp=2,
                               sequence_parallel=True), reference)


def residual_stream_under_sequence_parallel():
    """(type, placements, local shape) of block 0's output, and the logits' shape, with TP2 + sequence parallel."""
    from kfm.model import Transformer
    from kfm.train.parallel.distributed import DistInfo
    from kfm.train.parallel.parallelize import build_mesh, parallelize

    pc = ParallelismConfig(tp=2, sequence_parallel=True)
    info = DistInfo(torch.distributed.get_rank(), 2, 0, torch.device("cpu"))
    model = Transformer(GQA)
    model.init_weights(seed=0)
    parallelize(model, pc, info, build_mesh(pc, info))
    seen = []
    model.layers[0].register_forward_hook(lambda m, a, out: seen.append(out))
    logits = model(torch.randint(0, 768, (3, 16)))
    out = seen[0]
    return type(out).__name__, [str(p) for p in out.placements], tuple(out.to_local().shape), tuple(logits.shape)


def test_sequence_parallel_shards_the_residual_stream_by_position():
    for kind, placements, local, logits in run_distributed(residual_stream_under_sequence_parallel, 2):
        assert (kind, placements, local, logits) == ("DTensor", ["S(1)"], (3, 8, 64), (3, 16, 768))


@pytest.mark.slow  # ~40 s (4 processes on 2 cores); TP2 itself runs in make test
def test_fsdp2_and_hsdp_x_tp2_on_four_processes_equal_one_process(run_dir):
    """FSDP2 x TP2 (mesh shard 2 x tp 2) and HSDP x TP2 (replicate 2 x shard 1 x tp 2), 4 processes each."""
    data = run_dir / "data"
    reference = layout_run(run_dir / "one", data, GQA, 1)  # 2 micro batches: the 2 replicas' batches
    assert_same_run(layout_run(run_dir / "fsdp2xtp2", data, GQA, 4, tp=2), reference, validation=False)
    assert_same_run(layout_run(run_dir / "hsdpxtp2", data, GQA, 4, tp=2, backend="hsdp", hsdp_replicas=2), reference,
                    validation=False)


@pytest.mark.parametrize("world, change, message", [
    (4, dict(tp=3), r"tp=3 does not divide the 4 ranks: valid on 4 ranks: tp=1 \(x4 data parallel\), tp=2 \(x2"),
    (8, dict(tp=8), r"tp=8 must divide model.n_heads=4, model.n_kv_heads=2 .* valid on 8 ranks: tp=1 .*, "
                    r"tp=2 \(x4 data parallel\)"),
    (2, dict(tp=2, backend="deepspeed"), r"DeepSpeed stays data-parallel \(ZeRO\)"),
    (2, dict(tp=2, backend="ddp"), r"with fsdp2 or hsdp, not ddp"),
    (4, dict(tp=2, sequence_parallel=True), r"loader.seq_len=31 is not divisible by 2; use loader.seq_len=30 or 32"),
])
def test_bad_layouts_are_refused_naming_the_numbers_and_a_valid_layout(world, change, message):
    with pytest.raises(ValueError, match=message):
        check_layout(ParallelismConfig(**change), GQA, world, seq_len=31)
    with pytest.raises(ValueError, match="sequence_parallel=true .* set trainer.parallelism.tp > 1 too"):
        ParallelismConfig(sequence_parallel=True)
    with pytest.raises(ValueError, match="MoE layers .* no tensor-parallel plan yet"):
        check_layout(ParallelismConfig(tp=2), moe_model_cfg(), 2)
    assert check_layout(ParallelismConfig(tp=2), GQA, 4).dp == 2


def test_the_pretrain_command_refuses_a_bad_layout_before_starting_a_process_group(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "WORLD_SIZE": "4"}  # as torchrun would set it; no MASTER_ADDR: no group could start
    out = subprocess.run([sys.executable, "-m", "kfm.train.cli.pretrain", f"run_dir={tmp_path}",
                          "trainer.parallelism.tp=3"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode != 0
    assert "trainer.parallelism.tp=3 does not divide the 4 ranks" in out.stderr, out.stderr[-2000:]
    assert "init_process_group" not in out.stderr


def test_launch_checks_the_layout_against_the_allocation():
    from kfm.train.cli.launch import LaunchError, check_allocation_layout
    from kfm.train.config import ClusterConfig

    job = make_job("runs/x")
    job.model, job.cluster = GQA, ClusterConfig(name="h100_node", gpus_per_node=8)
    job.trainer.parallelism.tp = 2
    check_allocation_layout(job, nnodes=2)  # 16 ranks: tp 2 x 8 data parallel
    job.trainer.parallelism.tp = 16
    with pytest.raises(LaunchError, match=r"tp=16 does not divide the 8 processes of a node .* use tp in 1, 2, 4, 8"):
        check_allocation_layout(job, nnodes=2)
    job.trainer.parallelism.tp = 8
    with pytest.raises(LaunchError, match=r"tp=8 must divide model.n_heads=4.*\(the allocation: 2 nodes x 8 processes\)"):
        check_allocation_layout(job, nnodes=2)


def vocab_parallel_loss_against_the_reference(dtype_name: str):
    """(loss difference, hidden-gradient and weight-gradient relative differences) of the vocabulary-parallel
    cross-entropy on 2 ranks against the plain one, with ignored targets, a z-loss and chunks of 5 of 23 tokens."""
    from kfm.model.kernels.linear_cross_entropy import linear_cross_entropy_reference
    from kfm.train.parallel.loss_parallel import vocab_parallel_cross_entropy

    dtype, rank = getattr(torch, dtype_name), torch.distributed.get_rank()
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(23, 16, generator=gen).to(dtype).requires_grad_()
    w = (torch.randn(26, 16, generator=gen) * 0.5).to(dtype).requires_grad_()
    t = torch.randint(0, 26, (23,), generator=gen)
    t[[3, 11]] = -100
    ref = linear_cross_entropy_reference(h.float(), w.float(), t, z_loss=1e-3)
    ref.backward()
    mine_w = w.detach()[rank * 13:(rank + 1) * 13].clone().requires_grad_()
    h2 = h.detach().clone().requires_grad_()
    loss = vocab_parallel_cross_entropy(h2, mine_w, t, rank * 13, None, z_loss=1e-3, chunk=5)
    loss.backward()

    def rel(a, b):
        return ((a.float() - b.float()).norm() / b.float().norm()).item()

    return abs(loss.item() - ref.item()), rel(h2.grad, h.grad), rel(mine_w.grad, w.grad[rank * 13:(rank + 1) * 13])


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-5), ("bfloat16", 2e-2)])
def test_the_vocabulary_parallel_loss_equals_the_plain_one(dtype, tol):
    for loss_diff, grad_h, grad_w in run_distributed(vocab_parallel_loss_against_the_reference, 2, dtype):
        assert loss_diff < tol and grad_h < tol and grad_w < tol, (loss_diff, grad_h, grad_w)
