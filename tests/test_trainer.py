"""The trainer in 2 gloo processes with FSDP2: loss falls, resume is exact, bad setups fail clearly."""

import shutil

import pytest
import torch

from kfm.train.checkpoint.layout import list_checkpoints
from tests.helpers import make_job, read_metrics, run_distributed, train_and_report


def test_fsdp2_training_loss_falls_and_resume_is_exact(run_dir):
    job = make_job(run_dir, steps=8, tie=True)  # tied embeddings, as in the demo preset
    (last, weights), _ = run_distributed(train_and_report, 2, job)
    train_losses, val_losses = read_metrics(run_dir, "train_loss"), read_metrics(run_dir, "val_loss")
    assert train_losses[-1] < train_losses[0] - 0.5
    assert val_losses[-1] < val_losses[0]
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == ["step_0000004", "step_0000008"]

    # Crash after the step-4 checkpoint: drop step 8 and run the same job again.
    shutil.rmtree(run_dir / "checkpoints" / "step_0000008")
    (last2, weights2), _ = run_distributed(train_and_report, 2, job)
    assert last2 == last
    for k in weights:
        assert torch.equal(weights[k], weights2[k]), k


def test_resume_on_a_different_world_size(run_dir):
    job = make_job(run_dir, steps=4)
    run_distributed(train_and_report, 2, job)
    job.trainer.steps = 6
    (last, _), = run_distributed(train_and_report, 1, job)  # 1 process reshards the 2-rank checkpoint
    assert "val_loss" in last
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")][-1] == "step_0000006"


def test_vocab_mismatch_names_the_fix(run_dir):
    job = make_job(run_dir)
    job.model.vocab_size = 1024
    with pytest.raises(RuntimeError, match=r"model.vocab_size=1024 but the tokenizer .* has 768 pieces: set model.vocab_size=768"):
        run_distributed(train_and_report, 1, job)


def test_tokenizer_differing_from_the_shards_names_the_fix(run_dir, tiny_tokenizer):
    (run_dir / "tokenizer").mkdir()
    (run_dir / "tokenizer" / "tokenizer.model").write_bytes(b"another tokenizer")
    with pytest.raises(RuntimeError, match=r"is not the tokenizer the shards .* were built with"):
        run_distributed(train_and_report, 1, make_job(run_dir))
