"""The trainer in 2 gloo processes with FSDP2: loss falls, resume is exact, bad setups fail clearly."""

import shutil
from pathlib import Path

import pytest
import torch

from data_pipeline.build import build_shards
from data_pipeline.config import CleanConfig, DataConfig, DataSource
from model import ModelConfig
from tests.helpers import run_distributed
from train.checkpoint import list_checkpoints
from train.config import OptimConfig, PretrainJob, TrainerConfig


def make_job(run_dir: Path, steps=8, tie=False, **trainer_kw) -> PretrainJob:
    return PretrainJob(
        run_dir=str(run_dir),
        model=ModelConfig(vocab_size=768, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden_dim=96,
                          max_seq_len=64, tie_embeddings=tie),
        data=DataConfig(seq_len=32),
        optim=OptimConfig(lr=1e-2, warmup_steps=2),
        trainer=TrainerConfig(**{"steps": steps, "local_batch_size": 4, "log_every": 2, "val_every": 4,
                                 "val_batches": 2, "checkpoint_every": 4, "keep_checkpoints": 5,
                                 "wandb_mode": "disabled", **trainer_kw}),
    )


def train_and_report(job: PretrainJob):
    from train.distributed import init_distributed
    from train.trainer import Trainer

    trainer = Trainer(job, init_distributed())
    last = trainer.fit()
    return last, trainer.engine.full_state_dict()


def build_tiny_shards(corpus: dict, tokenizer: Path, out: Path) -> None:
    # The tiny corpus recombines a few sentences: near-dedup would leave too little of it (tested elsewhere).
    cfg = DataConfig(sources=[DataSource(name=k, path=str(v)) for k, v in corpus.items()], seq_len=32,
                     val_fraction=0.1, num_workers=1, clean=CleanConfig(dedup_near=False))
    build_shards(cfg, tokenizer / "tokenizer.model", out)


@pytest.fixture()
def run_dir(tiny_corpus, tiny_tokenizer, tmp_path):
    build_tiny_shards(tiny_corpus, tiny_tokenizer, tmp_path / "data")
    return tmp_path


def read_metrics(run_dir: Path, key: str) -> list[float]:
    import json

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if key in r]


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
