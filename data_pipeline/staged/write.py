"""Stages 4 and 5 of the staged build: the kept documents into shards, then the manifest.

``write`` (per unit): the unit's documents that dedup kept, in input order, into
``<out>/<split>/<source>_<file>_<n>.bin`` (rolling over at ``data.shard_tokens``). Shards belong to one
input file, so their bytes do not depend on how many tasks built them. ``merge`` (one task): the
manifest, listing the shards in input order, with every counter summed per source.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np

from kfm.data_pipeline.config import DataConfig
from kfm.data_pipeline.reader import DataError
from kfm.data_pipeline.shards import TOKEN_BYTES, Manifest, ShardInfo, ShardWriter, file_sha256, token_dtype
from kfm.data_pipeline.staged.layout import Plan, Unit, WorkDir
from kfm.data_pipeline.staged.scan import SPLITS
from kfm.tokenizer.hf import load_sentencepiece
from kfm.tokenizer.pieces import piece_byte_lengths

TOP_DOMAINS = 1000
"""Domains listed per source in the manifest (by kept tokens); the rest are summed as ``(other)``."""


def write_unit(work: WorkDir, plan: Plan, cfg: DataConfig, unit: Unit, vocab_size: int) -> dict:
    """Stage write for one unit; returns its completion record (shards and dedup counts)."""
    t0 = time.perf_counter()
    source = cfg.sources[unit.source_index]
    folder = work.unit_dir(unit.index)
    dtype = token_dtype(vocab_size)
    offsets = np.load(folder / "offsets.npy")
    splits = np.load(folder / "split.npy")
    keep = np.ones(len(splits), dtype=bool)
    counts = Counter()
    if work.removed(unit.index).is_file():
        removed = np.load(work.removed(unit.index))
        keep[removed["ordinal"]] = False
        counts["removed_exact_duplicate"] = int(removed["exact"].sum())
        counts["removed_near_duplicate"] = int(len(removed) - removed["exact"].sum())
        counts = +counts  # no zero counters (as the one-machine build)
    out = Path(plan.out_dir)
    stem = f"{source.name}_{unit.file_index:05d}"
    writers = {s: ShardWriter(out, s, source.name, dtype, cfg.shard_tokens, stem=stem) for s in SPLITS}
    kept = np.flatnonzero(keep)
    with (folder / "tokens.bin").open("rb") as tokens:  # read in order (a memory map's pages would count as RSS)
        for i in kept:
            tokens.seek(int(offsets[i]) * dtype.itemsize)
            writers[SPLITS[splits[i]]].write(np.fromfile(tokens, dtype=dtype, count=int(offsets[i + 1] - offsets[i])))
    counts["docs_kept"] = int(keep.sum())
    shards = [asdict(s) for w in writers.values() for s in w.close()]
    return {"source": source.name, "counts": dict(counts), "shards": shards, "domains": _domains(folder, kept, offsets),
            "seconds": round(time.perf_counter() - t0, 3)}


def _domains(folder: Path, kept: np.ndarray, offsets: np.ndarray) -> dict[str, list[int]]:
    """Domain -> [documents, tokens] of the kept documents that have a URL."""
    names = json.loads((folder / "domains.json").read_text())
    which = np.load(folder / "domain.npy")[kept]
    lengths = np.diff(offsets)[kept]
    has = which >= 0
    docs = np.bincount(which[has], minlength=len(names))
    toks = np.bincount(which[has], weights=lengths[has], minlength=len(names))
    return {names[d]: [int(docs[d]), int(toks[d])] for d in np.flatnonzero(docs)}


def top_domains(per_domain: dict[str, Counter], top: int) -> dict[str, dict[str, int]]:
    """The ``top`` domains by tokens (ties by name), the rest summed as ``(other)``."""
    ranked = sorted(per_domain.items(), key=lambda kv: (-kv[1]["tokens"], kv[0]))
    out = {name: dict(c) for name, c in ranked[:top]}
    if len(ranked) > top:
        rest = Counter()
        for _, c in ranked[top:]:
            rest.update(c)
        out["(other)"] = {**dict(rest), "domains": len(ranked) - top}
    return out


def merge(work: WorkDir, plan: Plan, cfg: DataConfig) -> Manifest:
    """Stage merge: ``manifest.json`` (written last: its presence means the build is complete)."""
    out = Path(plan.out_dir)
    sp = load_sentencepiece(plan.tokenizer_model)
    manifest = Manifest(vocab_size=sp.get_piece_size(), dtype=token_dtype(sp.get_piece_size()).name,
                        tokenizer_sha256=file_sha256(Path(plan.tokenizer_model)), bos_id=sp.bos_id(),
                        eos_id=sp.eos_id(), fingerprint=plan.fingerprint)
    counts = {s.name: Counter() for s in cfg.sources}
    domains: dict[str, dict[str, Counter]] = {s.name: {} for s in cfg.sources}
    seconds = 0.0
    for u in range(len(plan.units)):
        for stage in ("scan", "write"):
            rec = work.record(stage, u)
            counts[rec["source"]].update(rec["counts"])
            seconds += rec["seconds"]
        written = work.record("write", u)
        manifest.shards.extend(ShardInfo(**s) for s in written["shards"])
        for name, (docs, toks) in written["domains"].items():
            domains[written["source"]].setdefault(name, Counter()).update(docs=docs, tokens=toks)
    for stage in ("buckets", "removals"):
        seconds += sum(work.record(stage, i).get("seconds", 0.0) for i in work.items(plan, stage))
    totals = {s: sum(x.num_tokens for x in manifest.split_shards(s)) for s in SPLITS}
    docs = {s: sum(x.num_docs for x in manifest.split_shards(s)) for s in SPLITS}
    if totals["train"] == 0:
        raise DataError("the corpus is empty: no document in data.sources has any text")
    if totals["val"] == 0:
        raise DataError(f"no document landed in the validation split ({docs['train']} documents): "
                        "raise data.val_fraction or add more data")
    np.save(out / TOKEN_BYTES, piece_byte_lengths(sp))
    manifest.stats = {"tokens": totals, "docs": docs, "task_seconds": round(seconds, 2),
                      "cleaning": {name: dict(sorted(c.items())) for name, c in counts.items()},
                      "units": len(plan.units),
                      "domains": {s: top_domains(d, TOP_DOMAINS) for s, d in domains.items() if d}}
    manifest.config = asdict(cfg)
    manifest.save(out)
    return manifest
