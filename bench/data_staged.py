"""The staged data build (kfm.data_pipeline.staged) on this machine: throughput, memory per task, and
near-duplicate recall across tasks.

    python bench/data_staged.py throughput [--copies 16] [--tokenizer runs/demo/tokenizer/tokenizer.model]
    python bench/data_staged.py recall [--per-bin 100]

``throughput``: the sample corpus enlarged ``--copies`` times (``bench/enlarge.py``: no copy duplicates
another; the text is no longer Korean or English, so its compression and filter figures mean nothing: only
the work per byte does), written as files of ``--file-mb`` MB (the units). Built twice side
by side with the local executor: 1 task on 1 worker, then ``--tasks`` tasks on 2 workers; per stage the wall
seconds, the task seconds summed, MB/s of input text, and each stage's largest peak RSS of one task.

``recall``: real Korean paragraphs of the sample corpus (>= 100 characters) with planted edited copies at true
character-shingle Jaccard 0.5-0.9 (bench/near_dedup.py's method), in 4 files built as 4 tasks: half of the
pairs have both members in one file (one task), half have them in files of different tasks. Recall per bin
and arrangement: the share of planted pairs of which the build removes a member.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from kfm.data_pipeline.config import CleanConfig, DataConfig, DataSource  # noqa: E402
from kfm.data_pipeline.staged.cli import build_staged  # noqa: E402
from kfm.data_pipeline.staged.config import StagedConfig  # noqa: E402
from kfm.data_pipeline.staged.executor import run_local  # noqa: E402
from kfm.data_pipeline.staged.layout import STAGES, WorkDir  # noqa: E402
from kfm.data_pipeline.staged.stages import prepare  # noqa: E402
from enlarge import copy_table, sample_documents  # noqa: E402

def enlarged_corpus(sample: Path, out: Path, copies: int, file_mb: float) -> dict[str, Path]:
    """Every source of the sample corpus ``copies`` times (``copy_table``), as folders of ~``file_mb`` MB files."""
    folders = {}
    for name in ("ko", "en", "code"):
        docs = sample_documents(sample, name)
        folders[name] = out / name
        folders[name].mkdir(parents=True)
        part, size, f = 0, 0, None
        for k in range(copies):
            table = copy_table(k) if k else {}
            for d in docs:
                if f is None or size >= file_mb * 1e6:
                    f = (folders[name] / f"part-{part:04d}.jsonl").open("w", encoding="utf-8")
                    part, size = part + 1, 0
                line = json.dumps({"text": d.translate(table)}, ensure_ascii=False) + "\n"
                f.write(line)
                size += len(line.encode())
        f.close()
    return folders


def data_config(folders: dict[str, Path], **kw) -> DataConfig:
    return DataConfig(sources=[DataSource(name=k, path=str(v), lang=k) for k, v in folders.items()], **kw)


def timed_build(cfg: DataConfig, tokenizer: Path, root: Path, tasks: int, workers: int, buckets: int) -> dict:
    work = WorkDir(root / "work")
    plan = prepare(cfg, tokenizer, root / "data", work, buckets)
    t0 = time.perf_counter()
    walls = run_local(work, plan, tasks, workers)
    wall = time.perf_counter() - t0
    per_stage = {}
    for stage in STAGES:
        recs = [work.record(stage, i) for i in work.items(plan, stage)]
        per_stage[stage] = {"wall": walls.get(stage, 0.0), "task_seconds": sum(r["seconds"] for r in recs),
                            "peak_rss_mb": max(r["peak_rss_mb"] for r in recs)}
    manifest = json.loads((root / "data" / "manifest.json").read_text())
    mb = sum(c.get("bytes_in", 0) for c in manifest["stats"]["cleaning"].values()) / 1e6
    return {"wall": wall, "stages": per_stage, "mb": mb, "units": len(plan.units)}


def throughput(args) -> None:
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        folders = enlarged_corpus(args.sample, tmp / "corpus", args.copies, args.file_mb)
        print(f"enlarged corpus: {args.copies} copies of the sample corpus, written in {time.perf_counter() - t0:.0f} s")
        cfg = data_config(folders)
        runs = {}
        layouts = [("1 task, 1 worker", 1, 1)] * (not args.parallel_only) + [(f"{args.tasks} tasks, 2 workers", args.tasks, 2)]
        for label, tasks, workers in layouts:
            runs[label] = timed_build(cfg, args.tokenizer, tmp / label.replace(" ", "_").replace(",", ""), tasks,
                                      workers, args.buckets)
            shutil.rmtree(tmp / label.replace(" ", "_").replace(",", ""), ignore_errors=True)
        mb = next(iter(runs.values()))["mb"]
        units = next(iter(runs.values()))["units"]
        print(f"\n{mb:.1f} MB of input text in {units} files of ~{args.file_mb:g} MB; {args.buckets} dedup buckets; "
              f"local executor, page cache warm (the corpus was just written)\n")
        print("| stage | " + " | ".join(f"{k}: wall s | task s | MB/s per core | peak RSS MB" for k in runs) + " |")
        print("|---|" + "---:|---:|---:|---:|" * len(runs))
        for stage in STAGES:
            cells = []
            for r in runs.values():
                s = r["stages"][stage]
                cells.append(f"{s['wall']:.1f} | {s['task_seconds']:.1f} | "
                             f"{mb / max(s['task_seconds'], 1e-9):.2f} | {s['peak_rss_mb']:.0f}")
            print(f"| {stage} | " + " | ".join(cells) + " |")
        print()
        for label, r in runs.items():
            task_s = sum(s["task_seconds"] for s in r["stages"].values())
            print(f"{label}: {r['wall']:.1f} s wall, {mb / r['wall']:.2f} MB/s; {task_s:.1f} task-seconds: "
                  f"{mb / task_s:.2f} MB/s per core busy")
        two = runs[layouts[-1][0]]
        if len(runs) == 2:
            print(f"scaling 1 -> 2 workers: {runs[layouts[0][0]]['wall'] / two['wall']:.2f}x wall")
        per_core = mb / sum(s["task_seconds"] for s in two["stages"].values())
        print(f"projection: 10 TB on 1,000 cores at {per_core:.2f} MB/s per core = "
              f"{10e6 / (per_core * 1000) / 3600:.1f} h of task time (stage start-up and stragglers not included)")


def recall(args) -> None:
    from near_dedup import BINS, planted_copy

    from kfm.data_pipeline.documents import DocumentProcessor
    from kfm.tokenizer.config import TextSource
    from kfm.tokenizer.sampling import iter_documents

    rng = random.Random(args.seed)
    paragraphs = [p for d in iter_documents(TextSource(path=str(args.sample / "ko.jsonl")))
                  for p in d.split("\n") if len(p) >= 100]
    vocab = sorted({w for p in paragraphs for w in p.split()})
    files: list[list[tuple[str, tuple | None]]] = [[] for _ in range(4)]
    for i, p in enumerate(paragraphs):
        files[i % 4].append((p, None))
    used = set()
    for b in [x for x in BINS if x >= 0.5]:
        for arrangement in ("one task", "across tasks"):
            made = 0
            for i in rng.sample(range(len(paragraphs)), len(paragraphs)):
                if made == args.per_bin:
                    break
                if i in used:
                    continue
                copy = planted_copy(paragraphs[i], b, CleanConfig.near_shingle_chars, vocab, rng)
                if copy is not None:
                    used.add(i)
                    home = i % 4
                    files[home if arrangement == "one task" else (home + 1 + rng.randrange(3)) % 4].append(
                        (copy, (b, arrangement, i)))
                    made += 1
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        (tmp / "ko").mkdir()
        for f, docs in enumerate(files):
            with (tmp / "ko" / f"part-{f}.jsonl").open("w", encoding="utf-8") as fh:
                for text, _ in docs:
                    fh.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
        cfg = data_config({"ko": tmp / "ko"}, val_fraction=0.03)
        build_staged(cfg, args.tokenizer, tmp / "data", tmp / "work", StagedConfig(tasks=4, workers=2,
                                                                                   keep_intermediate=True))
        processor = DocumentProcessor(cfg, args.tokenizer)
        removed = set()
        work = WorkDir(tmp / "work")
        for u, docs in enumerate(files):
            survivors = [d.index for d in processor.process([t for t, _ in docs], "ko", Counter())]
            if work.removed(u).is_file():
                for ordinal in np.load(work.removed(u))["ordinal"]:
                    removed.add((u, survivors[int(ordinal)]))
        print(f"{len(paragraphs)} real Korean paragraphs >= 100 chars in 4 files (4 tasks) + planted copies, "
              f"{args.per_bin} per bin and arrangement; threshold {CleanConfig.near_threshold}\n")
        print("| true Jaccard | copy in the original's file (one task) | copy in another task's file |")
        print("|---:|---:|---:|")
        for b in [x for x in BINS if x >= 0.5]:
            cells = []
            for arrangement in ("one task", "across tasks"):
                # a pair is found when either member goes (a copy in an earlier file comes first and stays)
                planted = [((u, k), (g[2] % 4, g[2] // 4)) for u, docs in enumerate(files)
                           for k, (_, g) in enumerate(docs) if g is not None and g[:2] == (b, arrangement)]
                found = sum(copy in removed or orig in removed for copy, orig in planted)
                cells.append(f"{found / len(planted):.3f} ({len(planted)})")
            print(f"| {b:.1f} | " + " | ".join(cells) + " |")


def main() -> None:
    cache = Path(os.environ.get("KFM_CACHE", "~/.cache/kfm")).expanduser()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["throughput", "recall"])
    ap.add_argument("--sample", type=Path, default=cache / "sample_corpus")
    ap.add_argument("--tokenizer", type=Path, default=ROOT / "runs" / "demo" / "tokenizer" / "tokenizer.model")
    ap.add_argument("--copies", type=int, default=16)
    ap.add_argument("--file-mb", type=float, default=2.0)
    ap.add_argument("--parallel-only", action="store_true", help="skip the 1-task build (the memory run)")
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--buckets", type=int, default=16)
    ap.add_argument("--per-bin", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tmp", default=None, help="folder for the temporary corpus and builds")
    args = ap.parse_args()
    throughput(args) if args.mode == "throughput" else recall(args)


if __name__ == "__main__":
    main()
