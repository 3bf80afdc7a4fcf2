"""Context parallelism on gloo CPU processes: each sequence split over 2 ranks (load-balanced chunks), keys and
values gathered, trains as one process does with packed documents and with a sliding window (every step's loss and
the validation loss within rel 1e-5, fp32, final weights within 1e-5); a CP2 checkpoint resumes without context
parallelism; bad layouts are refused."""

import shutil

import pytest
import torch

from kfm.model import ModelConfig
from kfm.train.config import ParallelismConfig
from kfm.train.parallel.context_parallel import chunk_indices
from kfm.train.parallel.layout import check_layout
from tests.helpers import make_job, read_metrics, run_distributed, train_and_report

WINDOWED = ModelConfig(vocab_size=768, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, ffn_hidden_dim=96,
                       max_seq_len=64, qk_norm=True, norm_eps=1e-6, sliding_window=12, layer_pattern="LG")
"""A sliding-window layer (12 tokens) and a global one."""


def train(run_dir, data, world, steps=6, global_batch=8, local_batch=4, document_masking=True, **parallelism):
    job = make_job(run_dir, steps=steps, global_batch_size=global_batch, metrics={"log_every": 1},
                   checkpoint={"every": 3}, validation={"every": 3, "batches": 1}, parallelism=parallelism)
    job.model, job.data_dir = WINDOWED, str(data)
    job.trainer.local_batch_size, job.trainer.document_masking = local_batch, document_masking
    job.optim.lr, job.optim.eps = 2e-3, 1e-6  # eps: see tests/test_tensor_parallel.py
    weights = run_distributed(train_and_report, world, job)[0][1]
    return read_metrics(run_dir, "train_loss"), read_metrics(run_dir, "val_loss"), weights


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return ((a - b).norm() / b.norm().clamp(min=1e-12)).item() < 1e-5


def assert_same(values, reference):
    assert len(values) == len(reference) and len(values) >= 2
    for step, (a, b) in enumerate(zip(values, reference)):
        assert abs(a - b) <= 1e-5 * abs(b), (step, a, b)


def assert_same_run(ours, reference, validation=True):
    """``validation``: the validation losses too (a global validation batch is local batch x data-parallel ranks:
    comparable only at the same data-parallel size)."""
    assert_same(ours[0], reference[0])
    if validation:
        assert_same(ours[1], reference[1])
    for key, value in reference[2].items():
        assert close(ours[2][key], value), key


@pytest.mark.parametrize("document_masking", [True, pytest.param(False, marks=pytest.mark.slow)],
                         ids=["packed_documents", "window_only"])  # the packed run has a window layer too
def test_cp2_equals_one_process(run_dir, document_masking):
    data = run_dir / "data"
    reference = train(run_dir / "one", data, 1, document_masking=document_masking)  # 2 micro batches of 4
    # 2 ranks, one replica: each rank holds half of every sequence, 2 micro batches of 4 sequences
    assert_same_run(train(run_dir / "cp2", data, 2, document_masking=document_masking, cp=2), reference)
    if not document_masking:
        return
    shutil.copytree(run_dir / "cp2", run_dir / "cp1", ignore=shutil.ignore_patterns("step_0000006"))
    (run_dir / "cp1" / "metrics.jsonl").unlink()
    losses, _, weights = train(run_dir / "cp1", data, 2)
    assert_same(losses, reference[0][3:])
    for key, value in reference[2].items():
        assert close(weights[key], value), key


@pytest.mark.slow  # ~15 s; CP2 itself runs in make test above
def test_fsdp2_x_cp2_on_four_processes_equals_one_process(run_dir):
    """FSDP2 over 2 replicas x CP2, one micro batch of 4 a replica."""
    data = run_dir / "data"
    reference = train(run_dir / "one", data, 1)
    assert_same_run(train(run_dir / "fsdp2xcp2", data, 4, cp=2), reference, validation=False)


def test_chunks_are_load_balanced_and_cover_the_sequence():
    parts = [chunk_indices(16, 2, r).tolist() for r in range(2)]
    assert parts == [[0, 1, 2, 3, 12, 13, 14, 15], [4, 5, 6, 7, 8, 9, 10, 11]]
    causal_work = [sum(i + 1 for i in p) for p in parts]  # keys each rank's queries attend to
    assert causal_work[0] == causal_work[1]


@pytest.mark.parametrize("world, change, message", [
    (4, dict(cp=3), r"cp=3 does not divide the 4 ranks"),
    (2, dict(cp=2), r"loader.seq_len=30 is not divisible by 2 x cp = 4 .* use loader.seq_len=28 or 32"),
    (2, dict(cp=2, backend="deepspeed"), r"cp=2: DeepSpeed stays data-parallel"),
    (4, dict(cp=2, tp=2), r"cp=2 with tp, pp or ep is not built yet"),
])
def test_bad_context_layouts_are_refused(world, change, message):
    with pytest.raises(ValueError, match=message):
        check_layout(ParallelismConfig(**change), WINDOWED, world, seq_len=30)
    layout = check_layout(ParallelismConfig(cp=2), WINDOWED, 8, seq_len=32)
    assert (layout.dp, layout.dp_rank(5), layout.cp_rank(5)) == (4, 2, 1)
