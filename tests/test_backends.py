"""Every data-parallel backend (FSDP2, HSDP, DDP, DeepSpeed ZeRO 1/2/3, with activation checkpointing) follows
the single-process loss curve; checkpoints survive kills, reshard, and refuse what does not fit."""

import json

import pytest
import torch

from kfm.train.checkpoint.layout import read_state
from tests.helpers import make_job, run_distributed, train_and_report

STEPS = 5


def losses(run_dir) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train_loss"] for r in rows if "train_loss" in r]


def run(run_dir, world: int, **trainer_kw):
    job = make_job(run_dir, steps=STEPS, **trainer_kw)
    job.trainer.metrics.log_every, job.trainer.validation.every, job.trainer.checkpoint.every = 1, 100, 100
    job.trainer.local_batch_size = 8 // world  # the same 8 sequences per step, split over the ranks
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    results = run_distributed(train_and_report, world, job)
    import shutil

    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return losses(run_dir), results[0][1], recorded_digests(run_dir)


def recorded_digests(run_dir) -> dict[str, str]:
    """The weight digests this run's provenance ledger recorded (init, final checkpoint); the ledger is
    cleared for the next run in the same directory."""
    import shutil

    from kfm.train.provenance.ledger import Ledger

    records = [env["record"] for env in Ledger(run_dir).envelopes()]
    shutil.rmtree(run_dir / "provenance")
    return {r["kind"]: r["weights"]["sha256"] for r in records}


@pytest.fixture()
def reference(run_dir):
    return run(run_dir, 1)


@pytest.mark.parametrize("backend, extra", [
    ("fsdp2", {}), ("hsdp", {"hsdp_replicas": 2}), ("ddp", {}),
    ("fsdp2", {"activation_checkpointing": "full"}), ("ddp", {"activation_checkpointing": "selective"}),
    ("fsdp2", {"cpu_offload": True}), ("deepspeed", {"zero_stage": 1}), ("deepspeed", {"zero_stage": 2}),
    ("deepspeed", {"zero_stage": 3, "activation_checkpointing": "full"}),
])
def test_backend_matches_the_single_process_run(run_dir, reference, backend, extra):
    ref_losses, ref_weights, ref_digests = reference
    got_losses, got_weights, got_digests = run(run_dir, 2, parallelism={"backend": backend, **extra})
    assert len(got_losses) == STEPS and got_losses[-1] < got_losses[0]
    assert got_losses == pytest.approx(ref_losses, rel=1e-5, abs=1e-6)
    # Plain parameter names whatever the wrapping. (Weights are not compared element-wise: Adam turns
    # round-off-sized gradients of rarely seen embeddings into lr-sized steps of either sign.)
    assert set(got_weights) == set(ref_weights)
    assert all(got_weights[k].shape == ref_weights[k].shape for k in ref_weights)
    # Provenance digests, hashed shard by shard across the ranks, are those of the plain weights: the same
    # initial weights as the 1-process run, and the final checkpoint's record matches the gathered weights.
    from kfm.train.provenance.digests import digest_tensors, state_dict_tensors

    assert got_digests["init"] == ref_digests["init"]
    assert got_digests["checkpoint"] == digest_tensors(state_dict_tensors(got_weights)).sha256


@pytest.mark.parametrize("backend, extra", [("fsdp2", {}), ("deepspeed", {"zero_stage": 2})])
def test_bf16_follows_the_fp32_curve_loosely(run_dir, reference, backend, extra):
    ref_losses, _, ref_digests = reference
    got_losses, _, got_digests = run(run_dir, 2, parallelism={"backend": backend, "param_dtype": "bf16", **extra})
    assert got_digests["init"] == ref_digests["init"]  # the fp32 master weights are hashed
    assert got_losses[-1] < got_losses[0]
    assert got_losses == pytest.approx(ref_losses, rel=2e-2)  # bf16 has 8 bits of mantissa


def test_a_ddp_checkpoint_resumes_under_fsdp2(run_dir):
    from kfm.train.checkpoint.layout import list_checkpoints

    job = make_job(run_dir, steps=4, parallelism={"backend": "ddp"})
    run_distributed(train_and_report, 2, job)
    job.trainer.parallelism.backend, job.trainer.steps = "fsdp2", 6
    (last, _), = run_distributed(train_and_report, 1, job)
    assert "val_loss" in last
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")][-1] == "step_0000006"
    state = read_state(run_dir / "checkpoints" / "step_0000006")
    assert state["data"]["consumed"] == 4 * 2 * 4 + 2 * 1 * 4  # 4 steps of 2 ranks x 4, then 2 of 1 rank x 4


def build_and_gather(job):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from kfm.train.parallel.distributed import init_distributed
    from kfm.train.parallel.engine import build_model

    model = build_model(job, init_distributed())
    meta_left = [n for n, p in model.named_parameters() if p.is_meta]
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return meta_left, {k: v.clone() for k, v in full.items()}


@pytest.mark.parametrize("backend", ["fsdp2", "hsdp"])
def test_sharded_model_is_initialised_from_meta_like_the_plain_model(run_dir, backend):
    import torch

    from kfm.model import Transformer

    job = make_job(run_dir, tie=True, parallelism={"backend": backend})
    (meta_left, weights), _ = run_distributed(build_and_gather, 2, job)
    plain = Transformer(job.model)
    plain.init_weights(seed=job.trainer.seed)
    assert not meta_left
    for k, v in plain.state_dict().items():
        assert torch.equal(weights[k], v), k


def test_consolidate_an_fsdp2_checkpoint_to_one_safetensors_file(run_dir):
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    job = make_job(run_dir, steps=4, tie=True)
    (_, weights), _ = run_distributed(train_and_report, 2, job)
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "kfm.train.cli.consolidate", f"run_dir={run_dir}"], cwd=root, check=True,
                   capture_output=True, timeout=300)
    sd = load_file(str(run_dir / "checkpoints" / "step_0000004" / "model.safetensors"))
    assert set(sd) == set(weights) - {"output.weight"}  # tied: stored once
    for k, v in sd.items():
        assert torch.equal(v, weights[k]), k


def test_checkpoint_of_another_model_or_damaged_is_named(run_dir):
    job = make_job(run_dir, steps=4)
    run_distributed(train_and_report, 2, job)
    wider = make_job(run_dir, steps=6)
    wider.model.ffn_hidden_dim, wider.model.n_layers = 128, 3
    with pytest.raises(RuntimeError, match=r"(?s)written by a different model config:\s+missing in checkpoint: "
                                           r"layers.2.attention.wk.weight .*shape layers.0.feed_forward.w1.weight: "
                                           r"checkpoint \(96, 64\) vs model \(128, 64\)"):
        run_distributed(train_and_report, 1, wider)
    for f in (run_dir / "checkpoints" / "step_0000004").glob("*.distcp"):
        f.write_bytes(f.read_bytes()[:100])  # truncated shards
    with pytest.raises(RuntimeError, match=r"checkpoint .*step_0000004 could not be read \(files shorter than its "
                                           r"metadata says: __0_0.distcp \(100 of \d+ bytes\).*damaged: there is no "
                                           r"earlier checkpoint to fall back to") as caught:
        run_distributed(train_and_report, 1, make_job(run_dir, steps=6))
    assert "delete it" not in str(caught.value) and "FrameSummary" not in str(caught.value)


def test_fsdp2_resumes_on_three_ranks(run_dir):
    job = make_job(run_dir, steps=4)
    run_distributed(train_and_report, 2, job)
    job.trainer.steps = 6
    results = run_distributed(train_and_report, 3, job)  # 2 -> 3 ranks: resharded
    assert all("val_loss" in last for last, _ in results)
    state = read_state(run_dir / "checkpoints" / "step_0000006")
    assert state["data"]["consumed"] == 4 * 2 * 4 + 2 * 3 * 4


KILLED_DURING_SAVE = """
import os, pickle, signal, sys
import kfm.train.checkpoint.manager as manager
import kfm.train.loop.trainer as trainer
from kfm.train.parallel.distributed import init_distributed

job = pickle.load(open(sys.argv[1], "rb"))
real_publish = manager.publish

def die_before_publishing(tmp, final, state, keep):
    if final.name == "step_0000008":
        os.kill(os.getpid(), signal.SIGKILL)  # every file written, the checkpoint not yet published
    return real_publish(tmp, final, state, keep)

manager.publish = die_before_publishing
trainer.Trainer(job, init_distributed()).fit()
"""


@pytest.mark.parametrize("backend", ["fsdp2", "deepspeed"])
def test_kill_during_a_checkpoint_write_resumes_from_the_previous_one(run_dir, backend):
    import pickle
    import subprocess
    import sys
    from pathlib import Path

    from kfm.train.checkpoint.layout import latest_checkpoint, list_checkpoints

    job = make_job(run_dir, steps=8, parallelism={"backend": backend})
    (run_dir / "job.pkl").write_bytes(pickle.dumps(job))
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", KILLED_DURING_SAVE, str(run_dir / "job.pkl")], cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (run_dir / "checkpoints" / "step_0000008.tmp").is_dir()  # the half-published checkpoint
    assert latest_checkpoint(run_dir / "checkpoints").name == "step_0000004"
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_0000004\n"
    (last, _), = run_distributed(train_and_report, 1, job)
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == ["step_0000004", "step_0000008"]
    assert not (run_dir / "checkpoints" / "step_0000008.tmp").exists()
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_0000008\n"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r["step"] for r in rows if "train_loss" in r]
    assert logged == [2, 4, 6, 8, 6, 8] and "val_loss" in last  # the second start went on from step 4
