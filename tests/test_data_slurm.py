"""The staged data build on a real Slurm: 2 emulated nodes on this host (scripts/ci/local_slurm.sh).

Skipped (and reported so) where Slurm is not installed and cannot be (installing needs root).
"""

import json
import re
import time
from pathlib import Path

import pytest

from kfm.data_pipeline.staged.cli import build_staged
from kfm.data_pipeline.staged.config import SlurmConfig, StagedConfig
from kfm.data_pipeline.staged.executor import BuildFailed, report, wait_slurm
from kfm.data_pipeline.staged.layout import WorkDir
from tests.helpers import shard_bytes, split_corpus_config, write_split_corpus

ROOT = Path(__file__).resolve().parents[1]
SLOW_UNIT = """
import os, time
from kfm.data_pipeline.staged import scan
_scan_unit = scan.scan_unit
def scan_unit(work, plan, cfg, processor, unit):
    if unit.index == {unit}:
        print("test: unit {unit} holds", flush=True)
        time.sleep(300)
    return _scan_unit(work, plan, cfg, processor, unit)
scan.scan_unit = scan_unit
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_split_corpus(tmp_path_factory.mktemp("split"), {"ko": 3, "en": 2, "code": 1})


def slurm_build(corpus, tokenizer, root: Path, env: dict, wait: bool = True, **corpus_override):
    build = StagedConfig(tasks=4, dedup_buckets=4, executor="slurm", wait=wait, slurm=SlurmConfig(mem_gb=0))  # the local nodes declare no memory
    return build_staged(split_corpus_config({**corpus, **corpus_override}), tokenizer / "tokenizer.model",
                        root / "data", root / "work", build, env=env)


def nodes_of(logs: list[Path]) -> set[str]:
    return {m.group(1) for p in logs for m in [re.search(r"on node (\S+)", p.read_text())] if m}


def test_four_tasks_on_two_nodes_a_cancelled_task_reruns_alone(slurm, corpus, tiny_tokenizer, tmp_path):
    reference = build_staged(split_corpus_config(corpus), tiny_tokenizer / "tokenizer.model", tmp_path / "ref" / "data",
                             tmp_path / "ref" / "work", StagedConfig(tasks=1, workers=1))
    root = tmp_path / "slurm"
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(SLOW_UNIT.format(unit=2))  # unit 2 is scan task 2's (6 units, 4 tasks)
    held = {**slurm, "PYTHONPATH": f"{inject}:{ROOT}"}
    slurm_build(corpus, tiny_tokenizer, root, held, wait=False)
    work = WorkDir(root / "work")
    jobs = json.loads((work.root / "slurm" / "jobs.json").read_text())
    assert list(jobs) == ["scan", "buckets", "removals", "write", "merge"]
    deadline = time.time() + 120
    while not any("holds" in p.read_text() for p in (work.root / "logs").glob("scan_00002.*.log")):
        assert time.time() < deadline, "scan task 2 did not start"
        time.sleep(0.3)
    import subprocess

    subprocess.run(["scancel", f"{jobs['scan']}_2"], env=slurm, check=True)
    wait_slurm(list(jobs.values()), slurm)
    complete, text = report(work, work.load_plan(), 4)
    assert not complete and "scan     3/4 tasks done, not finished: [2]" in text and "buckets  0/4" in text
    first = sorted(work.root.glob("logs/scan_*.log"))
    assert nodes_of(first) == {"127.0.0.1", "127.0.0.2"}

    manifest = slurm_build(corpus, tiny_tokenizer, root, slurm)  # resubmitted: only scan task 2 runs again
    again = json.loads((work.root / "slurm" / "jobs.json").read_text())
    assert sorted(p.name for p in work.root.glob(f"logs/scan_*.{again['scan']}.log")) == [
        f"scan_00002.{again['scan']}.log"]
    assert len(list(work.root.glob("logs/write_*.log"))) == 4
    assert shard_bytes(root / "data") == shard_bytes(tmp_path / "ref" / "data")
    assert manifest.stats["cleaning"] == reference.stats["cleaning"]


def test_a_task_failing_on_a_bad_record_is_reported(slurm, corpus, tiny_tokenizer, tmp_path):
    bad = tmp_path / "ko"
    bad.mkdir()
    for p in sorted(corpus["ko"].iterdir()):
        (bad / p.name).write_bytes(p.read_bytes())
    broken = bad / "part-002.jsonl"
    broken.write_bytes(broken.read_bytes() + b'{"text": 12}\n')
    with pytest.raises(BuildFailed, match=r"scan +3/4 tasks done, failed: \[2\]") as err:
        slurm_build(corpus, tiny_tokenizer, tmp_path, slurm, ko=bad)
    lines = len(broken.read_bytes().splitlines())
    assert f"{broken}:{lines}: no string field 'text'" in str(err.value)
    log = next((tmp_path / "work" / "logs").glob("scan_00002.*.log"))
    assert f"{broken}:{lines}: no string field 'text'" in log.read_text() and str(log) in str(err.value)
