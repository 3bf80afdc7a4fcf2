"""The staged build (kfm.data_pipeline.staged) on the local executor: the same shards at any number of
tasks and buckets, only unfinished work redone, failures reported with file and line."""

import json
from pathlib import Path

import numpy as np
import pytest

from kfm.data_pipeline.loader import DistributedLoader, MixtureStream
from kfm.data_pipeline.staged.cli import build_staged
from kfm.data_pipeline.staged.config import StagedConfig
from kfm.data_pipeline.staged.dedup import exact_duplicates, near_duplicates
from kfm.data_pipeline.staged.scan import BAND_RECORD, EXACT_RECORD
from kfm.data_pipeline.staged.executor import BuildFailed, report
from kfm.data_pipeline.staged.layout import WorkDir
from kfm.data_pipeline.staged.stages import prepare, run_task
from tests.helpers import shard_bytes, split_corpus_config, warc_record, write_split_corpus, write_warc


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Folders of several files (ko 3, en 2, code 1), with duplicates planted across the Korean files."""
    return write_split_corpus(tmp_path_factory.mktemp("split"), {"ko": 3, "en": 2, "code": 1})


@pytest.fixture(scope="module")
def one_task(corpus, tiny_tokenizer, tmp_path_factory):
    """The corpus built as 1 task: (manifest, data folder), the reference the other builds must equal."""
    root = tmp_path_factory.mktemp("one_task")
    return build(corpus, tiny_tokenizer, root, tasks=1, workers=1), root


def build(corpus, tokenizer, root: Path, tasks: int, buckets: int = 16, workers: int = 2, **clean):
    return build_staged(split_corpus_config(corpus, **clean), tokenizer / "tokenizer.model", root / "data", root / "work",
                        StagedConfig(tasks=tasks, dedup_buckets=buckets, workers=workers))


def test_a_document_goes_when_an_earlier_one_is_similar():
    """One band group of 5: doc 2 ~ doc 1 (J 0.7), doc 3 ~ doc 2 but not doc 1 (0.4), doc 4 like none, doc 5 a copy
    of doc 4: 2, 3 and 5 go (3 through 2, though 2 goes too); exact keys: the later of equal keys goes."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**32, 100, dtype=np.uint64)
    sigs = {1: base.copy(), 4: rng.integers(0, 2**32, 100, dtype=np.uint64)}
    sigs[2] = np.where(np.arange(100) < 70, base, base + 1)
    sigs[3] = np.where((np.arange(100) >= 30) & (np.arange(100) < 100), sigs[2], sigs[2] + 7)
    sigs[3][:30] += 7
    sigs[5] = sigs[4].copy()
    assert np.mean(sigs[3] == sigs[1]) < 0.5 <= np.mean(sigs[3] == sigs[2])
    rec = np.zeros(5, BAND_RECORD)
    rec["doc"] = [5, 3, 1, 4, 2]
    found, compared = near_duplicates(rec, lambda docs: np.stack([sigs[int(d)] for d in docs]), 0.5)
    assert found.tolist() == [2, 3, 5] and compared == 10
    keys = np.zeros(4, EXACT_RECORD)
    keys["k0"], keys["doc"] = [7, 9, 7, 7], [30, 10, 20, 40]
    assert sorted(exact_duplicates(keys).tolist()) == [30, 40]


def test_the_same_shards_from_one_task_or_four(corpus, tiny_tokenizer, one_task, tmp_path):
    one, one_root = one_task
    four = build(corpus, tiny_tokenizer, tmp_path / "four", tasks=4, buckets=3)
    assert one.stats["cleaning"] == four.stats["cleaning"]
    assert one.stats["docs"] == four.stats["docs"] and one.stats["tokens"] == four.stats["tokens"]
    assert shard_bytes(one_root / "data") == shard_bytes(tmp_path / "four" / "data")
    assert [s.file for s in one.shards] == [s.file for s in four.shards]
    # the planted exact and near duplicates across files are gone, and counted as such
    ko = one.stats["cleaning"]["ko"]
    assert ko["removed_exact_duplicate"] == 1 and ko["removed_near_duplicate"] == 2
    assert len({s.file.split("_")[1] for s in one.shards if s.source == "ko"}) == 3  # one shard series per file
    assert not (one_root / "work" / "units").exists()  # intermediate files removed at the end
    stream = MixtureStream(tmp_path / "four" / "data", 16, None, seed=0, verify=True)  # checksums match
    assert len(DistributedLoader(stream, 2, 0, 1).next_batch().inputs) == 2


def test_a_finished_build_is_not_redone(corpus, tiny_tokenizer, tmp_path):
    build(corpus, tiny_tokenizer, tmp_path, tasks=2, dedup_near=False)
    logs = sorted(p.name for p in (tmp_path / "work" / "logs").iterdir())
    before = (tmp_path / "data" / "manifest.json").stat().st_mtime_ns
    build(corpus, tiny_tokenizer, tmp_path, tasks=2, dedup_near=False)
    assert sorted(p.name for p in (tmp_path / "work" / "logs").iterdir()) == logs
    assert (tmp_path / "data" / "manifest.json").stat().st_mtime_ns == before


@pytest.mark.slow  # make test's headroom: tests/test_data_slurm.py reruns only a cancelled task, in make test
def test_only_unfinished_tasks_run_again(corpus, tiny_tokenizer, one_task, tmp_path):
    """Scan tasks 0, 1 and 3 of 4 finished, task 2 was killed half way through its unit: the build runs only
    scan task 2, then the later stages, and gives the shards of an uninterrupted build."""
    ref, ref_root = one_task
    root = tmp_path / "resumed"
    work = WorkDir(root / "work")
    plan = prepare(split_corpus_config(corpus), tiny_tokenizer / "tokenizer.model", root / "data", work, 16)
    for t in (0, 1, 3):
        run_task(work, "scan", t, 4)
    complete, text = report(work, plan, 4)
    assert not complete and "scan     3/4 tasks done, not finished: [2]" in text
    done = {p.name: p.stat().st_mtime_ns for p in (work.root / "done" / "scan").iterdir()}
    assert len(done) == 5  # 6 units, the one of task 2 not done
    (work.unit_dir(2).with_name("000002.partial")).mkdir(parents=True, exist_ok=True)  # what a kill leaves
    (work.unit_dir(2).with_name("000002.partial") / "tokens.bin").write_bytes(b"junk")
    assert not (work.root / "logs").exists()  # the tasks ran in this process
    manifest = build(corpus, tiny_tokenizer, root, tasks=4)
    assert sorted(p.name for p in (work.root / "logs").iterdir() if p.name.startswith("scan")) == [
        "scan_00002.local.log"]
    assert {p.name: p.stat().st_mtime_ns for p in (work.root / "done" / "scan").iterdir() if p.name in done} == done
    assert shard_bytes(root / "data") == shard_bytes(ref_root / "data")
    assert manifest.stats["cleaning"] == ref.stats["cleaning"]


def test_a_bad_record_fails_its_task_naming_file_and_line(corpus, tiny_tokenizer, tmp_path):
    bad = tmp_path / "ko"
    bad.mkdir()
    for p in sorted(corpus["ko"].iterdir()):
        (bad / p.name).write_bytes(p.read_bytes())
    broken = sorted(bad.iterdir())[1]
    lines = broken.read_bytes().splitlines(keepends=True)
    broken.write_bytes(b"".join(lines[:4]) + b'{"text": "unterminated\n' + b"".join(lines[4:]))
    with pytest.raises(BuildFailed) as err:
        build({**corpus, "ko": bad}, tiny_tokenizer, tmp_path, tasks=3)
    assert "scan" in str(err.value) and "failed: [1]" in str(err.value)
    assert f"{broken}:5: not valid JSON" in str(err.value)
    failure = json.loads(next((tmp_path / "work" / "failed").iterdir()).read_text())
    assert f"{broken}:5" in Path(failure["log"]).read_text()
    assert WorkDir(tmp_path / "work").is_done("scan", 0) and WorkDir(tmp_path / "work").is_done("scan", 2)


@pytest.mark.slow  # make test's headroom: tests/test_readers.py reads every format
def test_compressed_and_wet_inputs_give_the_same_shards_and_domain_counts(corpus, tiny_tokenizer, one_task, tmp_path):
    import gzip

    import zstandard

    ref, ref_root = one_task
    ko, en = tmp_path / "ko", tmp_path / "en"
    ko.mkdir()
    en.mkdir()
    for i, p in enumerate(sorted(corpus["ko"].iterdir())):  # part-000.jsonl.gz, part-001.jsonl.zst, ...
        data = p.read_bytes()
        (ko / f"{p.name}.gz").write_bytes(gzip.compress(data)) if i % 2 == 0 else \
            (ko / f"{p.name}.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    for p in sorted(corpus["en"].iterdir()):
        docs = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()]
        write_warc(en / f"{p.stem}.warc.wet.gz", [warc_record("conversion", d["url"], d["text"].encode()) for d in docs])
    got = build({**corpus, "ko": ko, "en": en}, tiny_tokenizer, tmp_path / "packed", tasks=2)
    assert shard_bytes(tmp_path / "packed" / "data") == shard_bytes(ref_root / "data")
    assert got.stats["cleaning"] == ref.stats["cleaning"]
    domains = got.stats["domains"]
    assert sorted(domains["ko"]) == ["ko0.example.kr", "ko1.example.kr", "ko2.example.kr"]
    assert sum(d["docs"] for d in domains["ko"].values()) == got.stats["cleaning"]["ko"]["docs_kept"]
    assert sum(d["tokens"] for d in domains["en"].values()) == sum(s.num_tokens for s in got.shards if s.source == "en")
    assert list(domains["code"]) == ["code0.example.kr"]


@pytest.mark.slow  # the readers' tests count skipped records of each kind in make test
def test_bad_records_are_skipped_and_counted_when_configured(corpus, tiny_tokenizer, tmp_path):
    import gzip

    ko = tmp_path / "ko"
    ko.mkdir()
    for p in sorted(corpus["ko"].iterdir()):
        (ko / p.name).write_bytes(p.read_bytes())
    (ko / "part-003.jsonl.gz").write_bytes(gzip.compress((ko / "part-000.jsonl").read_bytes())[:-40])  # truncated
    (ko / "part-004.wet").write_bytes(warc_record("conversion", "https://x.kr/", b""))  # a record without a body
    cfg = split_corpus_config({**corpus, "ko": ko})
    cfg.on_bad_record = "skip"
    manifest = build_staged(cfg, tiny_tokenizer / "tokenizer.model", tmp_path / "data", tmp_path / "work",
                            StagedConfig(tasks=2))
    assert manifest.stats["cleaning"]["ko"]["removed_bad_record"] == 2


@pytest.mark.slow  # make test's headroom: the functions underneath are tested above
def test_the_command_builds_reports_and_refuses_a_misspelt_key(corpus, tiny_tokenizer, tmp_path):
    import subprocess
    import sys

    sources = ",".join(f"{{name:{k},path:'{v}',lang:{k}}}" for k, v in corpus.items())
    args = [sys.executable, "-m", "kfm.data_pipeline.staged", f"run_dir={tmp_path}",
            f"tokenizer_model={tiny_tokenizer / 'tokenizer.model'}", f"data.sources=[{sources}]", "data.val_fraction=0.1",
            "build.tasks=2"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "data" / "manifest.json").is_file()
    status = subprocess.run(args + ["action=status"], capture_output=True, text=True, timeout=300)
    assert "scan     2/2 tasks done" in status.stdout and "merge    1/1 tasks done" in status.stdout
    typo = subprocess.run(args + ["build.taks=3"], capture_output=True, text=True, timeout=300)
    assert typo.returncode != 0 and "taks" in typo.stderr
