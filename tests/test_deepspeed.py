"""DeepSpeed ZeRO: its config comes from ours, its checkpoints resume, consolidate, and refuse what cannot work."""


import pytest
import torch

from kfm.train.checkpoint.layout import read_state
from kfm.train.parallel.deepspeed_engine import deepspeed_config
from tests.helpers import make_job, run_distributed, train_and_report


def test_deepspeed_config_is_generated_from_the_job(tmp_path):
    job = make_job(tmp_path, global_batch_size=32, parallelism={"backend": "deepspeed", "zero_stage": 2, "param_dtype": "bf16"})
    job.optim.grad_clip = 0.5
    cfg = deepspeed_config(job, world=4, accum=2)
    assert cfg["train_micro_batch_size_per_gpu"] == 4 and cfg["gradient_accumulation_steps"] == 2
    assert cfg["train_batch_size"] == 32 and cfg["gradient_clipping"] == 0.5
    assert cfg["zero_optimization"]["stage"] == 2
    assert cfg["bf16"] == {"enabled": True, "check_grad_overflow": True}
    with pytest.raises(ValueError, match="trainer.parallelism.zero_stage must be 1, 2 or 3"):
        make_job(tmp_path, parallelism={"backend": "deepspeed", "zero_stage": 4})


def test_deepspeed_resume_is_exact_and_world_size_changes_are_refused(run_dir):
    job = make_job(run_dir, steps=8, parallelism={"backend": "deepspeed", "zero_stage": 3})
    job.trainer.checkpoint.every = 4
    straight = run_distributed(train_and_report, 2, job)[0][1]
    import shutil

    shutil.rmtree(run_dir / "checkpoints" / "step_0000008")  # as if the run had died after step 4's checkpoint
    state = read_state(run_dir / "checkpoints" / "step_0000004")
    assert state["backend"] == "deepspeed" and state["world"] == 2
    resumed = run_distributed(train_and_report, 2, job)[0][1]
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    with pytest.raises(RuntimeError, match=r"DeepSpeed checkpoint .*step_0000008 was written by 2 ranks and this run "
                                           r"has 1: .*Resume on 2 ranks, or use trainer.parallelism.backend=fsdp2"):
        run_distributed(train_and_report, 1, make_job(run_dir, steps=10, parallelism={"backend": "deepspeed"}))
    with pytest.raises(RuntimeError, match=r"written by the deepspeed backend; DeepSpeed resumes only its own|"
                                           r"could not be read"):
        run_distributed(train_and_report, 1, make_job(run_dir, steps=10, parallelism={"backend": "fsdp2"}))


@pytest.mark.slow  # make test's headroom: the same refusals for FSDP2 are tests/test_backends.py's, in make test
def test_deepspeed_checkpoint_of_another_model_or_damaged_is_named(run_dir):
    job = make_job(run_dir, steps=4, parallelism={"backend": "deepspeed", "zero_stage": 1})
    run_distributed(train_and_report, 1, job)
    wider = make_job(run_dir, steps=6, parallelism={"backend": "deepspeed", "zero_stage": 1})
    wider.model.ffn_hidden_dim = 128
    with pytest.raises(RuntimeError, match=r"(?s)written by a different model config:\s+shape "
                                           r"layers.0.feed_forward.w1.weight: checkpoint \(96, 64\) vs model \(128, 64\)"):
        run_distributed(train_and_report, 1, wider)
    for f in (run_dir / "checkpoints" / "step_0000004").glob("*optim_states.pt"):
        f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(RuntimeError, match=r"checkpoint .*step_0000004 could not be read .*damaged"):
        run_distributed(train_and_report, 1, make_job(run_dir, steps=6, parallelism={"backend": "deepspeed", "zero_stage": 1}))


def test_a_zero3_checkpoint_consolidates_to_the_trained_weights(run_dir):
    from pathlib import Path

    from safetensors.torch import load_file

    from kfm.train.cli.consolidate import consolidate

    job = make_job(run_dir, steps=4, tie=True, parallelism={"backend": "deepspeed", "zero_stage": 3})
    (_, weights), _ = run_distributed(train_and_report, 2, job)
    ckpt = Path(run_dir) / "checkpoints" / "step_0000004"
    sd = load_file(str(consolidate(ckpt, run_dir / "model.safetensors")))
    assert set(sd) == set(weights) - {"output.weight"}  # tied: stored once
    for k, v in sd.items():
        assert torch.equal(v, weights[k]), k
