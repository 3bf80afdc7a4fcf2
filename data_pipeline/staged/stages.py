"""What one task of one stage does, and the build's start (``prepare``): the code every executor runs.

    python -m kfm.data_pipeline.staged.stages <work_dir> <stage> <task> <tasks>

runs task ``task`` of ``tasks`` of a stage: each of its items that has no completion marker yet, then
the marker. A failure is written to ``failed/<stage>_<task>.json`` (the error, which names the file and
line of a bad record, and the task's log) and the process exits 1; a rerun clears it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import resource
import shutil
import socket
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from kfm.data_pipeline.build import check_tokenizer_heldout
from kfm.data_pipeline.config import DataConfig
from kfm.data_pipeline.documents import DocumentProcessor
from kfm.data_pipeline.journal import fingerprint
from kfm.data_pipeline.reader import DataError, source_specs
from kfm.data_pipeline.shards import MANIFEST, Manifest, file_sha256
from kfm.data_pipeline.staged.layout import STAGES, Plan, Unit, WorkDir
from kfm.files import write_atomically

log = logging.getLogger(__name__)
BUILDER = "staged-1"
"""Part of the fingerprint: the staged build's shards differ from the one-machine build's (names, and
a near duplicate of any earlier document goes, not only of a kept one)."""


def staged_fingerprint(cfg: DataConfig, tokenizer_model: Path) -> str:
    return hashlib.sha256(f"{BUILDER}:{fingerprint(cfg, file_sha256(tokenizer_model))}".encode()).hexdigest()


def up_to_date(out: Path, fp: str) -> bool:
    if not (out / MANIFEST).is_file():
        return False
    try:
        return Manifest.load(out).fingerprint == fp
    except (ValueError, TypeError, KeyError):
        return False


def prepare(cfg: DataConfig, tokenizer_model: str | Path, out_dir: str | Path, work: WorkDir, dedup_buckets: int,
            keep_intermediate: bool = False) -> Plan | None:
    """The build's plan (a new one, or the interrupted build's), or None when the shards are up to date."""
    if not cfg.sources:
        raise DataError("data.sources is empty: name at least one corpus file or folder")
    tokenizer_model, out = Path(tokenizer_model).resolve(), Path(out_dir).resolve()
    if not tokenizer_model.is_file():
        raise DataError(f"tokenizer_model {tokenizer_model} does not exist: train the tokenizer first "
                        "(python -m kfm.tokenizer.train)")
    check_tokenizer_heldout(tokenizer_model, cfg.val_fraction)
    fp = staged_fingerprint(cfg, tokenizer_model)
    if up_to_date(out, fp):
        return None
    plan = work.load_plan()
    if plan is not None and (plan.fingerprint != fp or plan.out_dir != str(out)):
        log.info("%s: the config, tokenizer or inputs changed since the interrupted build: starting over", work.root)
        plan = None
    if plan is None:
        work.clear()
        shutil.rmtree(out, ignore_errors=True)
        units: list[Unit] = []
        for si, source in enumerate(cfg.sources):
            for fi, spec in enumerate(source_specs(source)):
                units.append(Unit(len(units), si, fi, str(Path(spec).expanduser().resolve())
                                  if not spec.startswith("hf:") else spec))
        plan = Plan(asdict(cfg), str(tokenizer_model), str(out), fp, dedup_buckets, [asdict(u) for u in units],
                    keep_intermediate)
        work.save_plan(plan)
    return plan


def run_task(work: WorkDir, stage: str, task: int, tasks: int) -> None:
    """Every item of task ``task`` of ``tasks`` of ``stage`` that is not done yet."""
    from kfm.data_pipeline.staged.dedup import bucket_duplicates, removals
    from kfm.data_pipeline.staged.scan import scan_unit
    from kfm.data_pipeline.staged.write import merge, write_unit

    plan = work.load_plan()
    if plan is None:
        raise DataError(f"{work.root}: no {work.root / 'job.json'}: start the build with "
                        "`python -m kfm.data_pipeline.staged`")
    cfg = plan.data_config()
    items = [i for i in work.task_items(plan, stage, task, tasks) if not work.is_done(stage, i)]
    log.info("stage %s task %d/%d: %d items to do", stage, task, tasks, len(items))
    processor = DocumentProcessor(cfg, plan.tokenizer_model) if stage in ("scan", "write") and items else None
    for item in items:
        t0 = time.perf_counter()
        if stage == "scan":
            record = scan_unit(work, plan, cfg, processor, plan.unit(item))
        elif stage == "buckets":
            record = bucket_duplicates(work, plan, cfg, item)
        elif stage == "removals":
            record = removals(work, plan, item)
        elif stage == "write":
            record = write_unit(work, plan, cfg, plan.unit(item), processor.vocab_size)
        else:
            manifest = merge(work, plan, cfg)
            record = {"shards": len(manifest.shards), "tokens": manifest.stats["tokens"]}
            if not plan.keep_intermediate:
                work.clear_intermediate()
        record.setdefault("seconds", round(time.perf_counter() - t0, 3))
        record["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # the task's, so far
        work.mark_done(stage, item, record)
        log.info("stage %s item %d done: %s", stage, item, {k: v for k, v in record.items() if k != "shards"})


def main(argv: list[str] | None = None) -> int:
    work_dir, stage, task, tasks = argv or sys.argv[1:]
    task, tasks = int(task), int(tasks)
    if stage not in STAGES:
        raise SystemExit(f"stage must be one of {STAGES}, got {stage!r}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    work = WorkDir(work_dir)
    work.failure(stage, task).unlink(missing_ok=True)
    job = os.environ.get("SLURM_ARRAY_JOB_ID", "local")
    node = os.environ.get("SLURMD_NODENAME", socket.gethostname())
    log.info("stage %s task %d of %d on node %s (job %s)", stage, task, tasks, node, job)
    try:
        run_task(work, stage, task, tasks)
    except Exception as err:  # noqa: BLE001 - every failure is reported the same way
        log.error("stage %s task %d failed: %s", stage, task, err)
        if not isinstance(err, DataError):
            traceback.print_exc()
        write_atomically(work.failure(stage, task), json.dumps({
            "stage": stage, "task": task, "error": str(err), "type": type(err).__name__,
            "host": node, "log": str(work.log(stage, task, job))}, ensure_ascii=False))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
