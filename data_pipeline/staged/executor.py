"""Where the staged build's tasks run: processes on this machine, or Slurm job arrays.

Both run the same task entry point (``python -m kfm.data_pipeline.staged.stages``) for every task that
is not done, stage after stage, and write each task's output to ``<work_dir>/logs``.

- ``run_local``: up to ``workers`` tasks at once; a stage starts when the one before has finished.
- ``submit_slurm``: each stage with work left is one ``sbatch --array`` of its unfinished tasks, depending
  on the stage before (``afterok``; ``--kill-on-invalid-dep`` cancels the rest when a task fails or is
  cancelled). Slurm schedules, retries on node failure and requeues; a resubmission after a failure runs
  only the tasks without a completion marker.

kfm uses its own executor rather than datatrove's: datatrove's pickles the pipeline with dill into the
logging folder and its MinHash works on word n-grams with its own hashing, while kfm's stages are plain
functions over character shingles tuned for Korean (bench/results/near_dedup.md); the executor proper
(markers, arrays with dependencies) is short.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

from kfm.data_pipeline.staged.config import SlurmConfig
from kfm.data_pipeline.staged.layout import STAGES, Plan, WorkDir
from kfm.files import write_atomically

log = logging.getLogger(__name__)
ENTRY = "kfm.data_pipeline.staged.stages"


class BuildFailed(RuntimeError):
    """A stage had tasks that failed or did not finish; the message says which and where their logs are."""


def task_command(python: str, work: WorkDir, stage: str, task: str, tasks: int) -> list[str]:
    return [python, "-m", ENTRY, str(work.root), stage, task, str(tasks)]


def report(work: WorkDir, plan: Plan, tasks: int) -> tuple[bool, str]:
    """(complete, a line per stage: tasks done, failed and left; each failure's error and log)."""
    lines, complete = [], True
    failures = {(f["stage"], f["task"]): f for f in work.failures()}
    for stage in STAGES:
        n = work.task_count(plan, stage, tasks)
        pending = work.pending_tasks(plan, stage, tasks)
        failed = [t for t in pending if (stage, t) in failures]
        complete &= not pending
        lines.append(f"{stage:8s} {n - len(pending)}/{n} tasks done" + (f", failed: {failed}" if failed else "")
                     + (f", not finished: {sorted(set(pending) - set(failed))}" if set(pending) - set(failed) else ""))
        for t in failed:
            f = failures[(stage, t)]
            lines.append(f"  task {t} on {f['host']}: {f['type']}: {f['error']} (log: {f['log']})")
    return complete, "\n".join(lines)


def run_local(work: WorkDir, plan: Plan, tasks: int, workers: int) -> dict[str, float]:
    """Every unfinished task, stage by stage, at most ``workers`` processes at a time; returns each stage's
    wall seconds."""
    from tqdm import tqdm

    walls = {}
    for stage in STAGES:
        n = work.task_count(plan, stage, tasks)
        pending = work.pending_tasks(plan, stage, tasks)
        if not pending:
            continue
        queue, running, failed, t0 = list(pending), {}, [], time.perf_counter()
        bar = tqdm(total=len(pending), desc=f"stage {stage}", unit="task", disable=None)
        while queue or running:
            while queue and len(running) < workers:
                t = queue.pop(0)
                path = work.log(stage, t, "local")
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("ab") as out:
                    running[t] = subprocess.Popen(task_command(sys.executable, work, stage, str(t), n),
                                                  stdout=out, stderr=subprocess.STDOUT)
            for t, proc in list(running.items()):
                if proc.poll() is not None:
                    del running[t]
                    bar.update()
                    if proc.returncode:
                        failed.append(t)
            time.sleep(0.05)
        bar.close()
        walls[stage] = time.perf_counter() - t0
        if failed:
            raise BuildFailed(f"stage {stage}: tasks {failed} of {n} failed\n{report(work, plan, tasks)[1]}")
    return walls


def _sbatch_script(work: WorkDir, python: str, stage: str, tasks: int) -> Path:
    path = work.root / "slurm" / f"{stage}.sh"
    path.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join(task_command(python, work, stage, "$SLURM_ARRAY_TASK_ID", tasks))
    path.write_text(f"#!/bin/bash\n# kfm staged data build, stage {stage} ({tasks} tasks)\nexec {command}\n")
    return path


def submit_slurm(work: WorkDir, plan: Plan, tasks: int, cfg: SlurmConfig, env: dict | None = None) -> list[str]:
    """One job array per stage with unfinished tasks, chained by dependencies; returns the job ids (also in
    ``<work_dir>/slurm/jobs.json``, stage -> job)."""
    python = cfg.python or sys.executable
    (work.root / "logs").mkdir(parents=True, exist_ok=True)
    jobs: dict[str, str] = {}
    for stage in STAGES:
        n = work.task_count(plan, stage, tasks)
        pending = work.pending_tasks(plan, stage, tasks)
        if not pending:
            continue
        args = ["sbatch", "--parsable", f"--job-name=kfm-data-{stage}", f"--array={','.join(map(str, pending))}",
                f"--output={work.root}/logs/{stage}_%5a.%A.log", f"--cpus-per-task={cfg.cpus_per_task}",
                f"--time={cfg.time}"]
        if cfg.mem_gb:
            args.append(f"--mem={int(cfg.mem_gb * 1024)}M")
        if cfg.partition:
            args.append(f"--partition={cfg.partition}")
        if jobs:
            args += [f"--dependency=afterok:{list(jobs.values())[-1]}", "--kill-on-invalid-dep=yes"]
        args += [*cfg.sbatch_args, str(_sbatch_script(work, python, stage, n))]
        done = subprocess.run(args, capture_output=True, text=True, env=env)
        if done.returncode:
            raise BuildFailed(f"sbatch refused stage {stage}: {done.stderr.strip()} (command: {' '.join(args)})")
        jobs[stage] = done.stdout.strip().split(";")[0]
        log.info("stage %s: %d tasks submitted as job %s", stage, len(pending), jobs[stage])
    write_atomically(work.root / "slurm" / "jobs.json", json.dumps(jobs))
    return list(jobs.values())


def wait_slurm(jobs: list[str], env: dict | None = None, poll: float = 1.0) -> None:
    """Until none of ``jobs`` is pending or running."""
    while jobs:
        out = subprocess.run(["squeue", "-h", "-o", "%i", "-t", "PD,R,CG,CF,S", "-j", ",".join(jobs)],
                             capture_output=True, text=True, env=env)
        if out.returncode == 0 and not out.stdout.strip():
            return
        if out.returncode and "Invalid job id" in out.stderr:
            return
        time.sleep(poll)
