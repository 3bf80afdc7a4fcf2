"""kill -9 at random steps, then resume: every later step's loss equals the uninterrupted run's, bit for bit,
with loss-spike detection on (its window, counts and the skip decisions come back from the checkpoint too).

The production entry point (``torchrun -m kfm.train.cli.pretrain``) runs in 2 gloo processes; the whole
process group (launcher and workers) is SIGKILLed (launcher and workers: a node going down) once the metrics show a randomly drawn step.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from kfm.train.parallel.distributed import free_port

ROOT = Path(__file__).resolve().parents[1]
STEPS = 30


MOE = ["model=debug_moe", "model.moe.bias_update_rate=0.01", "model.moe.seq_aux_loss_coef=0.01",
       "model.sliding_window=16"]
"""The debug MoE preset, its expert bias moving fast enough to matter within the run."""


LAYOUTS = {"+moe": MOE, "+tp2": ["trainer.parallelism.tp=2"], "+ep2": [*MOE, "trainer.parallelism.ep=2"],
           "+pp2": ["trainer.parallelism.pp=2", "trainer.global_batch_size=16", "model.tie_embeddings=false"],
           "+cp2": ["trainer.parallelism.cp=2", "model.sliding_window=16"]}
"""Variants of a backend: the debug MoE preset, tensor parallelism over the 2 processes, the MoE preset with its
experts split over them, 2 pipeline stages (2 micro batches a step), or each sequence split over the 2."""


def command(run_dir: Path, backend: str) -> list[str]:
    suffix = next((s for s in LAYOUTS if backend.endswith(s)), "")
    model, backend = LAYOUTS.get(suffix, []), backend.removesuffix(suffix)
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
            "-m", "kfm.train.cli.pretrain", f"run_dir={run_dir}", "model.vocab_size=768", "model.dim=128", "model.n_layers=4",
            "model.n_heads=4", "model.n_kv_heads=2", "model.ffn_hidden_dim=352", "model.max_seq_len=64",
            "loader.seq_len=64", "loader=natural", "optim.lr=1e-2", "optim.warmup_steps=2", f"trainer.steps={STEPS}",
            "trainer.local_batch_size=8", "trainer.metrics.log_every=1", "trainer.validation.every=1000", "trainer.validation.batches=1",
            "trainer.checkpoint.every=3", "trainer.checkpoint.keep=2", "trainer.metrics.wandb_mode=disabled",
            "trainer.parallelism.param_dtype=fp32", f"trainer.parallelism.backend={backend}",
            "trainer.stability.spike_sigmas=2.0", "trainer.stability.spike_window=4", *model]



def logged_losses(run_dir: Path) -> list[tuple[int, tuple]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    # (step, loss or None for a step skipped as a spike, steps skipped so far, for MoE models the mean absolute
    # expert bias): the decisions and the bias must replay too
    return [(r["step"], (r.get("train_loss"), r["skipped_steps"], r.get("moe/expert_bias_abs"))) for r in rows
            if "grad_norm" in r]


def start(run_dir: Path, backend: str, log_name: str) -> subprocess.Popen:
    log = (run_dir / log_name).open("w")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command(run_dir, backend), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env=env)


def kill_at(proc: subprocess.Popen, run_dir: Path, step: int) -> int:
    """SIGKILL the launcher and its workers once this run has logged step ``step``; returns the last step
    it logged."""
    before = len(logged_losses(run_dir))
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        mine = logged_losses(run_dir)[before:]
        if mine and mine[-1][0] >= step:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    tree = psutil.Process(proc.pid)
    victims = tree.children(recursive=True) + [tree]  # torchrun starts its workers in sessions of their own
    for victim in victims:
        victim.send_signal(signal.SIGKILL)
    psutil.wait_procs(victims, timeout=60)
    proc.wait(timeout=60)
    last = logged_losses(run_dir)[-1][0]
    assert step <= last < STEPS, "killed too late to test anything"
    return last


# deepspeed: slow for make test's headroom; its exact resume is tests/test_deepspeed.py's, in make test
@pytest.mark.parametrize("backend", ["fsdp2", pytest.param("deepspeed", marks=pytest.mark.slow),
                                     # ~45 s; the bias's exact resume also runs in make test (tests/test_moe_train.py)
                                     pytest.param("fsdp2+moe", marks=pytest.mark.slow),
                                     pytest.param("fsdp2+tp2", marks=pytest.mark.slow),  # ~60 s
                                     pytest.param("fsdp2+ep2", marks=pytest.mark.slow),
                                     pytest.param("fsdp2+pp2", marks=pytest.mark.slow),
                                     pytest.param("fsdp2+cp2", marks=pytest.mark.slow)])
def test_kill_9_at_random_steps_then_resume_reproduces_every_loss(tmp_path, run_dir, backend):
    import shutil

    reference_dir = tmp_path / "reference"
    shutil.copytree(run_dir / "data", reference_dir / "data")
    ref = start(reference_dir, backend, "train.log")
    assert ref.wait(timeout=600) == 0, (reference_dir / "train.log").read_text()[-3000:]
    reference = dict(logged_losses(reference_dir))
    assert sorted(reference) == list(range(1, STEPS + 1))
    if backend.endswith(("+moe", "+ep2")):  # the expert bias moved, and is compared at every step below
        assert all(r[2] is not None for r in reference.values()) and reference[STEPS][2] > 0.01

    rng = random.Random(f"kill-{backend}")
    first, second = rng.randint(4, 12), rng.randint(16, 22)
    killed_at = [kill_at(start(run_dir, backend, "run1.log"), run_dir, first)]
    killed_at.append(kill_at(start(run_dir, backend, "run2.log"), run_dir, second))
    last = start(run_dir, backend, "run3.log")
    assert last.wait(timeout=600) == 0, (run_dir / "run3.log").read_text()[-3000:]

    for name, killed in (("run2.log", killed_at[0]), ("run3.log", killed_at[1])):
        text = (run_dir / name).read_text()
        resumed = int(text.split("resumed from ")[1].split("step_")[1][:7])
        assert killed - 3 <= resumed <= killed, (name, killed, resumed)  # the newest checkpoint (every 3 steps)
    rows = logged_losses(run_dir)
    assert {s for s, _ in rows} == set(reference)
    assert len(rows) > STEPS  # steps after a checkpoint were trained twice ...
    mismatched = [(s, loss, reference[s]) for s, loss in rows if loss != reference[s]]
    assert not mismatched  # ... and every loss, the first time and the replay, equals the uninterrupted run's
