"""The production sbatch script against a real Slurm: 2 emulated nodes on this host (scripts/ci/local_slurm.sh).

Skipped (and reported so) where Slurm is not installed and cannot be (installing needs root).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kfm.train.checkpoint.layout import read_state

ROOT = Path(__file__).resolve().parents[1]
SBATCH = ROOT / "scripts" / "slurm" / "pretrain.sbatch"
# The debug preset with the test tokenizer's vocabulary (DEBUG); smaller still where many steps run (TINY).
DEBUG = ["cluster=local_cpu", "model=debug", "model.vocab_size=768", "loader.seq_len=32", "loader=natural",
         "trainer.validation.batches=1", "trainer.metrics.wandb_mode=disabled"]
TINY = DEBUG + ["model.dim=64", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2", "model.ffn_hidden_dim=96"]
# The local nodes have no GPUs and a few cores: override the script's production resource requests.
LOCAL = ["--nodes=2", "--gpus-per-node=0", "--cpus-per-task=1"]


def sbatch(env, run_dir: Path, overrides: list[str], *options: str, wait: bool = False,
           model: list[str] = TINY) -> subprocess.CompletedProcess:
    """Submit; with ``wait``, return once the job has ended, with returncode 0 only if it COMPLETED (as
    ``sbatch --wait`` would, without its polling interval that grows to tens of seconds)."""
    args = ["sbatch", "--parsable", *LOCAL, f"--output={run_dir}/slurm-%j.out", *options]
    done = subprocess.run(args + [str(SBATCH), f"run_dir={run_dir}", *model, *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    if wait and done.returncode == 0:
        state = wait_for(env, done.stdout.strip().split(";")[0], ENDED, timeout=600)["JobState"]
        done.returncode = 0 if state == "COMPLETED" else 1
    return done


def job_state(env, job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
    return dict(item.split("=", 1) for item in out.split() if "=" in item)


ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def wait_for(env, job: str, states: set[str], timeout: float = 300) -> dict[str, str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = job_state(env, job)
        if info.get("JobState") in states:
            return info
        time.sleep(0.5)
    raise TimeoutError(f"job {job} not in {states} after {timeout} s: {info}")


def with_injection(env, run_dir: Path, code: str) -> dict:
    """``env`` with a ``sitecustomize.py`` holding ``code`` first on the path of every process of the job."""
    inject = run_dir / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(code)
    return {**env, "PYTHONPATH": f"{inject}:{ROOT}"}


def usr1_after(env, run_dir: Path, job: str, rows: int) -> None:
    """Send the stop request once ``rows`` training steps are logged."""
    deadline = time.time() + 300
    while time.time() < deadline and not ((run_dir / "metrics.jsonl").exists() and len(train_rows(run_dir)) >= rows):
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=env, check=True)


def train_rows(run_dir: Path) -> list[int]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "train_loss" in r]


def test_sbatch_trains_on_two_nodes(slurm, run_dir):
    done = sbatch(slurm, run_dir, ["trainer.steps=8", "trainer.metrics.log_every=1", "trainer.checkpoint.every=4"], wait=True,
                  model=DEBUG)
    job = done.stdout.strip().split(";")[0]
    log = (run_dir / f"slurm-{job}.out").read_text()
    assert done.returncode == 0, log[-3000:]
    assert "2 nodes x 1 processes" in log and "training ended with status 0" in log
    assert job_state(slurm, job)["NodeList"] == "127.0.0.[1-2]"
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_0000008\n"
    state = read_state(run_dir / "checkpoints" / "step_0000008")
    assert state["world"] == 2 and train_rows(run_dir) == list(range(1, 9))


def test_usr1_checkpoints_requeues_and_resumes_without_repeating_steps(slurm, run_dir):
    steps = 150
    done = sbatch(slurm, run_dir, [f"trainer.steps={steps}", "trainer.metrics.log_every=1", "trainer.validation.every=1000",
                                   "trainer.checkpoint.every=1000"])
    job = done.stdout.strip().split(";")[0]
    usr1_after(slurm, run_dir, job, 10)
    held = wait_for(slurm, job, {"PENDING", "COMPLETED", "FAILED"})
    log = (run_dir / f"slurm-{job}.out").read_text()
    assert held["JobState"] == "PENDING" and held["Restarts"] == "1", log[-3000:]
    stopped = int((run_dir / "checkpoints" / "latest").read_text().strip().split("_")[1])
    assert 10 <= stopped < steps
    # The local cluster's cred_expire=10 holds a requeued job for 10 s (Slurm's default is 120).
    final = wait_for(slurm, job, {"COMPLETED", "FAILED", "CANCELLED"})
    log = (run_dir / f"slurm-{job}.out").read_text()
    assert final["JobState"] == "COMPLETED", log[-3000:]
    assert "all 2 ranks checkpointed and stopped; requeueing" in log and f"step_{stopped:07d} at step {stopped}" in log
    assert train_rows(run_dir) == list(range(1, steps + 1))  # every step once: none repeated, none skipped
    # A clean stop reads as one: no launcher traceback, no srun error (issue 15 item 7).
    for noise in ("Traceback", "SignalException", "srun: error", "ChildFailedError"):
        assert noise not in log, log[-3000:]


CRASH_IN_STOP_ON_RANK_1 = """
import os
if os.environ.get("RANK") == "1":
    import kfm.train.loop.trainer

    save = kfm.train.loop.trainer.Trainer.save

    def crash_in_the_stop_checkpoint(self):
        if self.stop_requested or self.preempted:
            raise RuntimeError("injected crash during the stop checkpoint on rank 1")
        return save(self)

    kfm.train.loop.trainer.Trainer.save = crash_in_the_stop_checkpoint
"""


def test_a_rank_crashing_in_the_stop_checkpoint_fails_the_job_without_a_requeue(slurm, run_dir):
    env = with_injection(slurm, run_dir, CRASH_IN_STOP_ON_RANK_1)
    done = sbatch(env, run_dir, ["trainer.steps=150", "trainer.metrics.log_every=1", "trainer.validation.every=1000",
                                 "trainer.checkpoint.every=1000"])
    job = done.stdout.strip().split(";")[0]
    usr1_after(slurm, run_dir, job, 5)
    final = wait_for(slurm, job, ENDED | {"PENDING"})
    log = (run_dir / f"slurm-{job}.out").read_text()
    assert final["JobState"] == "FAILED" and final["Restarts"] == "0", log[-3000:]
    assert "injected crash during the stop checkpoint on rank 1" in log
    assert "ranks completed their stop checkpoint" in log and "not requeued" in log


FAIL_ON_RANK_1 = """
import os
if os.environ.get("RANK") == "1":
    import kfm.train.loop.trainer

    def fit(self):
        raise RuntimeError("injected failure on rank 1")

    kfm.train.loop.trainer.Trainer.fit = fit
"""


def test_a_failing_rank_fails_the_job_with_its_error_in_the_log(slurm, run_dir):
    env = with_injection(slurm, run_dir, FAIL_ON_RANK_1)
    done = sbatch(env, run_dir, ["trainer.steps=50"], wait=True)
    job = done.stdout.strip().split(";")[0]
    assert done.returncode != 0
    log = (run_dir / f"slurm-{job}.out").read_text()
    assert "RuntimeError: injected failure on rank 1" in log
    assert "training ended with status 1" in log
    assert job_state(slurm, job)["JobState"] == "FAILED"


def test_launch_refuses_too_many_gpus_and_a_missing_allocation(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    outside = subprocess.run([sys.executable, "-m", "kfm.train.cli.launch", "cluster=local_cpu"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    assert outside.returncode == 2
    assert "SLURM_JOB_ID, SLURM_JOB_NODELIST, SLURM_NNODES not set: this script runs inside a Slurm allocation" \
        in outside.stderr
    fake = {**env, "SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "gpu-node-1", "SLURM_NNODES": "1",
            "SLURM_GPUS_ON_NODE": "4", "SLURMD_NODENAME": "gpu-node-1"}
    greedy = subprocess.run([sys.executable, "-m", "kfm.train.cli.launch", "cluster=h100_node"], cwd=ROOT, env=fake,
                            capture_output=True, text=True, timeout=120)
    assert greedy.returncode == 2
    assert ("cluster=h100_node uses cluster.gpus_per_node=8 but this node (gpu-node-1) has 4: request them with "
            "`sbatch --gpus-per-node=8`") in greedy.stderr
    direct = subprocess.run(["bash", str(SBATCH), "cluster=local_cpu"], cwd=ROOT,
                            env={**env, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=120)
    assert direct.returncode != 0 and "not set: this script runs inside a Slurm allocation" in direct.stderr


def test_launch_plan_exports_the_profile_without_overriding_the_site(monkeypatch):
    from kfm.train.cli.launch import launch_plan, shell_lines
    from kfm.train.config import ClusterConfig

    monkeypatch.setattr("kfm.train.cli.launch.first_host", lambda nodelist: "node-a")
    cluster = ClusterConfig(name="h100_node", gpus_per_node=8, env={"NCCL_IB_HCA": "mlx5", "NCCL_DEBUG": "WARN"})
    environ = {"SLURM_JOB_ID": "12", "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_NNODES": "2",
               "SLURM_RESTART_COUNT": "3", "MASTER_PORT": "29555", "NCCL_IB_HCA": "mlx5_0,mlx5_3"}
    plan = launch_plan(cluster, "runs/x", environ, gpus=8)
    assert plan == {"NNODES": "2", "NPROC_PER_NODE": "8", "MASTER_ADDR": "node-a", "MASTER_PORT": "29555",
                    "RDZV_ID": "12.3", "RUN_DIR": "runs/x"}
    lines = shell_lines(plan, cluster.env, environ)
    assert "export NCCL_IB_HCA=mlx5_0,mlx5_3" in lines and "export NCCL_DEBUG=WARN" in lines
    with pytest.raises(ValueError, match="cluster.procs_per_node=9 exceeds cluster.gpus_per_node=8"):
        ClusterConfig(gpus_per_node=8, procs_per_node=9)


def test_local_slurm_script_is_idempotent(slurm):
    again = subprocess.run(["bash", str(ROOT / "scripts" / "ci" / "local_slurm.sh"), "up"], capture_output=True,
                           text=True, timeout=120, env=slurm)
    assert again.returncode == 0 and again.stdout.strip() == f"export SLURM_CONF={slurm['SLURM_CONF']}"
    nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], env=slurm, capture_output=True, text=True).stdout
    assert sorted(nodes.split("\n")[:2]) == ["127.0.0.1 idle", "127.0.0.2 idle"]



def sweep(run_dir: Path, sweep_dir: Path, env, *launcher: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "kfm.train.cli.pretrain", "-m", "+experiment=lr_sweep", f"data_dir={run_dir / 'data'}",
            f"hydra.sweep.dir={sweep_dir}", *launcher, *TINY, "trainer.steps=4", "trainer.metrics.log_every=2"]
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def check_sweep(sweep_dir: Path) -> None:
    members = sorted(p.name for p in sweep_dir.iterdir() if p.name.startswith("lr="))
    assert members == ["lr=0.001", "lr=0.003"]
    groups = set()
    for name in members:
        state = read_state(sweep_dir / name / "checkpoints" / "step_0000004")
        assert state["config"]["optim"]["lr"] == float(name[3:]) and state["config"]["run_dir"] == str(sweep_dir / name)
        groups.add(state["config"]["trainer"]["metrics"]["wandb_group"])
        assert train_rows(sweep_dir / name) == [2, 4]
    assert groups == {str(sweep_dir)}  # one wandb group for the sweep


def test_a_learning_rate_sweep_runs_locally_one_member_after_another(run_dir):
    done = sweep(run_dir, run_dir / "sweep", {**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    check_sweep(run_dir / "sweep")


def test_a_learning_rate_sweep_through_the_submitit_launcher_on_slurm(slurm, run_dir):
    done = sweep(run_dir, run_dir / "sweep", slurm, "hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=10",
                 "hydra.launcher.cpus_per_task=1")
    assert done.returncode == 0, done.stderr[-3000:]
    check_sweep(run_dir / "sweep")
    jobs = list((run_dir / "sweep" / ".submitit").iterdir())
    assert len(jobs) >= 2  # an array job: one folder for the array, one per member


def test_wandb_runs_join_the_configured_group(tmp_path, monkeypatch):
    import wandb

    from kfm.train.loop.metrics import MetricsSink

    seen = {}

    class FakeRun:
        def log(self, *a, **k):
            pass

        def finish(self):
            pass

    monkeypatch.setattr(wandb, "init", lambda **kwargs: seen.update(kwargs) or FakeRun())
    MetricsSink(tmp_path / "lr=0.001", {}, "offline", "kfm", "lr-sweep-1").close()
    assert seen["group"] == "lr-sweep-1" and seen["name"] == "lr=0.001" and seen["mode"] == "offline"
