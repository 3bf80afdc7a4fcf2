"""``python -m kfm.data_pipeline.staged``: run (or resume) the staged build, or report where it stands.

    python -m kfm.data_pipeline.staged run_dir=runs/ko data=ko_web build.tasks=64 build.executor=slurm
    python -m kfm.data_pipeline.staged run_dir=runs/ko data=ko_web build.tasks=64 action=status

The same command resumes an interrupted or failed build (only unfinished tasks run) and does nothing
for a finished one whose inputs are unchanged.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import OmegaConf

from kfm.data_pipeline.build import data_dir
from kfm.data_pipeline.config import DataConfig
from kfm.data_pipeline.reader import DataError
from kfm.data_pipeline.shards import Manifest
from kfm.data_pipeline.staged.config import StagedBuildJob, StagedConfig
from kfm.data_pipeline.staged.executor import BuildFailed, report, run_local, submit_slurm, wait_slurm
from kfm.data_pipeline.staged.layout import WorkDir
from kfm.data_pipeline.staged.stages import prepare
from kfm.schemas import register_schemas

log = logging.getLogger(__name__)
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")


def build_staged(data: DataConfig, tokenizer_model: str | Path, out_dir: str | Path, work_dir: str | Path,
                 build: StagedConfig, env: dict | None = None) -> Manifest | None:
    """Run the build to the end and return its manifest (None: submitted to Slurm without waiting)."""
    work = WorkDir(work_dir)
    plan = prepare(data, tokenizer_model, out_dir, work, build.dedup_buckets, build.keep_intermediate)
    if plan is None:
        log.info("%s is up to date (same config, tokenizer and inputs); delete it to rebuild", out_dir)
        return Manifest.load(out_dir)
    log.info("%d units (input files) in %d tasks, %d dedup buckets", len(plan.units), build.tasks,
             plan.dedup_buckets)
    if build.executor == "local":
        run_local(work, plan, build.tasks, build.workers)
    else:
        jobs = submit_slurm(work, plan, build.tasks, build.slurm, env)
        if not build.wait:
            log.info("submitted jobs %s; `action=status` reports progress", jobs)
            return None
        wait_slurm(jobs, env)
    complete, text = report(work, plan, build.tasks)
    if not complete:
        raise BuildFailed(f"the build did not finish:\n{text}\nrun the same command again to rerun what is left")
    log.info("build complete:\n%s", text)
    return Manifest.load(out_dir)


register_schemas("data_build_staged_job_schema")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="data_build_staged")
def main(cfg) -> None:
    job: StagedBuildJob = OmegaConf.to_object(cfg)
    try:
        if job.action == "status":
            work = WorkDir(job.work_dir)
            plan = work.load_plan()
            if plan is None:
                print(f"{job.work_dir}: no build started here" + (
                    " (the shards are complete)" if (data_dir(job.run_dir) / "manifest.json").is_file() else ""))
                return
            print(report(work, plan, job.build.tasks)[1])
            return
        build_staged(job.data, job.tokenizer_model, data_dir(job.run_dir), job.work_dir, job.build)
    except (DataError, BuildFailed) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
