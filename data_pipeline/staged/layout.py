"""The staged build's work folder: its plan (``job.json``), completion markers, failure reports and logs.

    <work_dir>/job.json                  the data config, tokenizer, output folder, fingerprint and units
    <work_dir>/units/<u>/                scanned documents of unit u (stage scan)
    <work_dir>/dups/<b>/<p>.npy          duplicates bucket b found in the units of part p (stage buckets)
    <work_dir>/removed/<u>.npy           documents of unit u that dedup removes (stage removals)
    <work_dir>/done/<stage>/<item>.json  completion marker of one piece of work, with what it counted
    <work_dir>/failed/<stage>_<t>.json   why task t of a stage failed, and where its log is
    <work_dir>/logs/<stage>_<t>.<job>.log  a task's output (``job``: the Slurm array job id, or ``local``)

Work is split into *items* that do not depend on the number of tasks: a unit (one input file) for
scan and write, a bucket for buckets, a part (units ``p, p + dedup_buckets, ...``) for removals, one item
for merge. Task ``t`` of ``n`` does items
``t, t+n, t+2n, ...``; a task is done when all its items are.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import OmegaConf

from kfm.data_pipeline.config import DataConfig
from kfm.files import write_atomically

STAGES = ("scan", "buckets", "removals", "write", "merge")
JOB = "job.json"


@dataclass
class Unit:
    """One input file (or one ``hf:`` dataset) of one source."""

    index: int
    source_index: int
    file_index: int
    """Its place among its source's files: names its shards (``<source>_<file_index>_<n>.bin``)."""
    spec: str


@dataclass
class Plan:
    """What every task of the build reads first: fixed when the build starts."""

    data: dict
    tokenizer_model: str
    out_dir: str
    fingerprint: str
    dedup_buckets: int
    units: list
    keep_intermediate: bool = False

    def data_config(self) -> DataConfig:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), self.data))

    def unit(self, index: int) -> Unit:
        return Unit(**self.units[index])


class WorkDir:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # the plan
    def save_plan(self, plan: Plan) -> None:
        write_atomically(self.root / JOB, json.dumps(asdict(plan), indent=1, ensure_ascii=False))

    def load_plan(self) -> Plan | None:
        path = self.root / JOB
        return Plan(**json.loads(path.read_text())) if path.is_file() else None

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def clear_intermediate(self) -> None:
        for name in ("units", "dups", "removed"):
            shutil.rmtree(self.root / name, ignore_errors=True)

    # what each stage has to do
    def items(self, plan: Plan, stage: str) -> list[int]:
        if stage in ("scan", "write"):
            return list(range(len(plan.units)))
        if stage in ("buckets", "removals"):
            return list(range(plan.dedup_buckets))
        return [0]

    def task_count(self, plan: Plan, stage: str, tasks: int) -> int:
        return max(1, min(tasks, len(self.items(plan, stage))))

    def task_items(self, plan: Plan, stage: str, task: int, tasks: int) -> list[int]:
        return self.items(plan, stage)[task::tasks]

    # markers
    def marker(self, stage: str, item: int) -> Path:
        return self.root / "done" / stage / f"{item:06d}.json"

    def is_done(self, stage: str, item: int) -> bool:
        return self.marker(stage, item).is_file()

    def mark_done(self, stage: str, item: int, record: dict) -> None:
        write_atomically(self.marker(stage, item), json.dumps(record, ensure_ascii=False))

    def record(self, stage: str, item: int) -> dict:
        return json.loads(self.marker(stage, item).read_text())

    def pending_tasks(self, plan: Plan, stage: str, tasks: int) -> list[int]:
        n = self.task_count(plan, stage, tasks)
        return [t for t in range(n) if not all(self.is_done(stage, i) for i in self.task_items(plan, stage, t, n))]

    def failure(self, stage: str, task: int) -> Path:
        return self.root / "failed" / f"{stage}_{task:05d}.json"

    def failures(self) -> list[dict]:
        folder = self.root / "failed"
        return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []

    def log(self, stage: str, task: int, job: str) -> Path:
        return self.root / "logs" / f"{stage}_{task:05d}.{job}.log"

    # intermediate files
    def unit_dir(self, unit: int) -> Path:
        return self.root / "units" / f"{unit:06d}"

    def duplicates(self, bucket: int) -> Path:
        return self.root / "dups" / f"{bucket:05d}"

    def removed(self, unit: int) -> Path:
        return self.root / "removed" / f"{unit:06d}.npy"
