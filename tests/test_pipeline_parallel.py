"""Pipeline parallelism on gloo CPU processes: a 4-layer model split into stages over 2 ranks (1F1B with one
stage a rank, interleaved 1F1B with two, GPipe) and PP2 x TP2 on 4 ranks train as one process does (every step's loss
within rel 1e-5, fp32, final weights within 1e-5); a PP2 checkpoint resumes without pipeline parallelism; bad
layouts are refused naming the numbers."""

import shutil

import pytest
import torch

from kfm.model import ModelConfig
from kfm.train.config import ParallelismConfig
from kfm.train.parallel.layout import check_layout, check_microbatches
from kfm.train.parallel.pipeline import local_stages, stage_layers
from tests.helpers import assert_same_run, assert_values_equal, assert_weights_close, layout_run, make_job

DENSE = ModelConfig(vocab_size=768, dim=64, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=16, ffn_hidden_dim=96,
                    max_seq_len=64, qk_norm=True, norm_eps=1e-6, sliding_window=12, layer_pattern="LG")
"""Four layers (local sliding-window and global attention alternating), so that 4 stages have one each."""


def assert_consolidates(ckpt, weights):
    """The layout's checkpoint read back in one process (what HF export starts from) holds the run's weights."""
    from safetensors.torch import load_file

    from kfm.train.cli.consolidate import consolidate

    saved = load_file(consolidate(ckpt, ckpt.parent.parent / "model.safetensors"))
    assert saved.keys() == weights.keys()
    for key, value in weights.items():
        assert torch.equal(saved[key], value), key


def test_pp2_1f1b_and_interleaved_equal_one_process_and_resume_without_pipeline(run_dir):
    data = run_dir / "data"
    reference = layout_run(run_dir / "one", data, DENSE, 1)  # 2 micro batches of 4
    pp2 = layout_run(run_dir / "pp2", data, DENSE, 2, pp=2)
    assert_same_run(pp2, reference)  # validation too: through the pipeline
    assert_consolidates(run_dir / "pp2" / "checkpoints" / "step_0000006", pp2.weights)  # for HF export
    assert_same_run(layout_run(run_dir / "pp2v2", data, DENSE, 2, pp=2, pp_schedule="interleaved_1f1b",
                               pp_stages_per_rank=2), reference)
    # resharding: PP2's step-3 checkpoint resumed as FSDP2 over 2 ranks (one micro batch of 4 each)
    shutil.copytree(run_dir / "pp2", run_dir / "pp1", ignore=shutil.ignore_patterns("step_0000006"))
    (run_dir / "pp1" / "metrics.jsonl").unlink()
    pp1 = layout_run(run_dir / "pp1", data, DENSE, 2)
    assert_values_equal(pp1.losses, reference.losses[3:])
    assert_weights_close(pp1.weights, reference.weights)


@pytest.mark.slow  # ~25 s; PP2 itself runs in make test above
def test_gpipe_and_pp2_x_tp2_on_four_processes_equal_one_process(run_dir):
    data = run_dir / "data"
    reference = layout_run(run_dir / "one", data, DENSE, 1)
    assert_same_run(layout_run(run_dir / "gpipe", data, DENSE, 2, pp=2, pp_schedule="gpipe"), reference)
    assert_same_run(layout_run(run_dir / "pp2xtp2", data, DENSE, 4, pp=2, tp=2), reference)  # 4 processes


def test_stages_are_equal_runs_of_layers_assigned_round_robin():
    assert stage_layers(8, 4) == [range(0, 2), range(2, 4), range(4, 6), range(6, 8)]
    assert local_stages(1, 2, 2) == [1, 3] and local_stages(0, 4, 1) == [0]


@pytest.mark.parametrize("world, change, message", [
    (4, dict(pp=3), r"pp=3 does not divide the 4 ranks: use pp in 1, 2, 4"),
    (6, dict(pp=3), r"model.n_layers=4 cannot be split into pp=3 x pp_stages_per_rank=1 = 3 stages .* use pp=1, pp=2"),
    (4, dict(pp=2, pp_schedule="interleaved_1f1b", pp_stages_per_rank=4),
     r"n_layers=4 cannot be split into pp=2 x pp_stages_per_rank=4 = 8 stages .* use pp=1"),
    (2, dict(pp=2, backend="deepspeed"), r"pp=2: DeepSpeed stays data-parallel"),
    (2, dict(pp=2, pp_schedule="interleaved_zb", pp_stages_per_rank=2), r"zero bubble.*use interleaved_1f1b"),
    (8, dict(pp=2, tp=8), r"tp=8 does not divide the 4 ranks"),
])
def test_bad_pipeline_layouts_are_refused_naming_the_numbers(world, change, message):
    with pytest.raises(ValueError, match=message):
        check_layout(ParallelismConfig(**change), DENSE, world)


def test_pipeline_refusals_for_what_it_cannot_split_yet():
    from dataclasses import replace

    from kfm.model.config import MTPConfig
    from tests.helpers import moe_model_cfg

    for model, message in ((replace(DENSE, mtp=MTPConfig(depth=1)), "multi-token prediction"),
                           (replace(DENSE, tie_embeddings=True), "tied embeddings"),
                           (replace(moe_model_cfg(), n_layers=4), "MoE layers")):
        with pytest.raises(ValueError, match=message):
            check_layout(ParallelismConfig(pp=2), model, 2)
    with pytest.raises(ValueError, match=r"pp=2 needs at least 2 micro batches a step .* got 1"):
        check_microbatches(ParallelismConfig(pp=2), 1)
    with pytest.raises(ValueError, match=r"interleaved_1f1b with pp=2 needs the 5 micro batches .* multiple of 2"):
        check_microbatches(ParallelismConfig(pp=2, pp_schedule="interleaved_1f1b", pp_stages_per_rank=2), 5)
    with pytest.raises(ValueError, match="interleaved schedules need 2 or more stages a rank"):
        ParallelismConfig(pp=2, pp_schedule="interleaved_1f1b")
    layout = check_layout(ParallelismConfig(pp=2, tp=2), DENSE, 8)
    assert (layout.dp, layout.loss_ranks, layout.dp_rank(5), layout.pp_rank(5)) == (2, 4, 0, 1)


def test_launch_checks_the_pipeline_layout_and_its_micro_batches_against_the_allocation():
    from kfm.train.cli.launch import LaunchError, check_allocation_layout
    from kfm.train.config import ClusterConfig

    job = make_job("runs/x")
    job.model, job.cluster = DENSE, ClusterConfig(name="h100_node", gpus_per_node=8)
    job.trainer.parallelism.pp, job.trainer.local_batch_size = 2, 2
    job.trainer.global_batch_size = 32  # 2 nodes x 8 = 16 ranks: pp 2 x dp 8, 2 micro batches of 2
    check_allocation_layout(job, nnodes=2)
    job.trainer.global_batch_size = 16
    with pytest.raises(LaunchError, match=r"pp=2 needs at least 2 micro batches a step .* got 1 .*2 nodes x 8"):
        check_allocation_layout(job, nnodes=2)
    job.trainer.parallelism.pp = 8
    with pytest.raises(LaunchError, match=r"model.n_layers=4 cannot be split into pp=8"):
        check_allocation_layout(job, nnodes=2)
