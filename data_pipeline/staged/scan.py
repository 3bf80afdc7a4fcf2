"""Stage 1 of the staged build: one unit (input file) read, cleaned, filtered, split and tokenized.

Writes into ``<work_dir>/units/<u>/`` (built as ``<u>.partial`` and renamed when complete):

- ``tokens.bin`` / ``offsets.npy``: every candidate document's ``[bos] + ids + [eos]``, end to end, and
  where each starts (``n + 1`` offsets);
- ``split.npy``: 0 train, 1 validation, per document;
- ``signatures.bin``: ``(n, num_perm)`` uint32 MinHash values (near-dedup on);
- ``exact_<b>.bin`` / ``bands_<b>.bin``: the exact-dedup keys and the LSH band hashes, each with the
  document's global id (``unit << 32 | ordinal``), in the bucket ``b`` they are sorted in (stage buckets).

Memory stays bounded by one batch of documents whatever the file's size.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from itertools import islice
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from kfm.data_pipeline.config import DataConfig
from kfm.data_pipeline.documents import Document, DocumentProcessor
from kfm.data_pipeline.near_dedup import LSH_WEIGHTS, band_hashes, lsh_bands
from kfm.data_pipeline.reader import BadRecordLog
from kfm.data_pipeline.shards import token_dtype
from kfm.data_pipeline.staged.layout import Plan, Unit, WorkDir
from kfm.tokenizer.readers import iter_records

BATCH_DOCS = 64
EXACT_RECORD = np.dtype([("k0", "<u8"), ("k1", "<u8"), ("doc", "<u8")])
BAND_RECORD = np.dtype([("band", "<u8"), ("hash", "<u8"), ("doc", "<u8")])
SPLITS = ("train", "val")


def domain(url: str | None) -> str | None:
    """The host of a URL, lower case, without ``www.`` (None for no URL or one without a host)."""
    if not url:
        return None
    host = (urlsplit(url if "//" in url else f"//{url}").hostname or "").lower()
    return host.removeprefix("www.") or None


def doc_id(unit: int, ordinal: int | np.ndarray) -> np.ndarray:
    return (np.uint64(unit) << np.uint64(32)) | np.asarray(ordinal, dtype=np.uint64)


def split_id(doc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unit, ordinal) of global document ids."""
    doc = np.asarray(doc, dtype=np.uint64)
    return (doc >> np.uint64(32)).astype(np.int64), (doc & np.uint64(0xFFFFFFFF)).astype(np.int64)


def exact_bucket(k0: np.ndarray, buckets: int) -> np.ndarray:
    return (k0 % np.uint64(buckets)).astype(np.int64)


def band_bucket(band: np.ndarray, h: np.ndarray, buckets: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        return ((h + band.astype(np.uint64)) % np.uint64(buckets)).astype(np.int64)


class _BucketFiles:
    """Records appended to one file per bucket, opened on first use."""

    def __init__(self, folder: Path, prefix: str, buckets: int) -> None:
        self.folder, self.prefix, self.files = folder, prefix, [None] * buckets

    def append(self, records: np.ndarray, bucket: np.ndarray) -> None:
        order = np.argsort(bucket, kind="stable")
        records, bucket = records[order], bucket[order]
        cuts = np.flatnonzero(np.diff(bucket)) + 1
        for part in np.split(np.arange(len(bucket)), cuts):
            if len(part):
                b = int(bucket[part[0]])
                if self.files[b] is None:
                    self.files[b] = (self.folder / f"{self.prefix}_{b:05d}.bin").open("wb")
                self.files[b].write(records[part].tobytes())

    def close(self) -> None:
        for f in self.files:
            if f is not None:
                f.close()


def scan_unit(work: WorkDir, plan: Plan, cfg: DataConfig, processor: DocumentProcessor, unit: Unit) -> dict:
    """Stage 1 for one unit; returns its completion record (what was counted)."""
    t0 = time.perf_counter()
    source = cfg.sources[unit.source_index]
    final = work.unit_dir(unit.index)
    tmp = final.with_name(final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cc = cfg.clean
    exact, near = cc.enabled and cc.dedup_exact, cc.enabled and cc.dedup_near
    bands, rows = lsh_bands(cc.near_threshold, cc.near_num_perm, LSH_WEIGHTS)
    dtype = token_dtype(processor.vocab_size)
    counts: Counter = Counter()
    on_bad = BadRecordLog(source.name) if cfg.on_bad_record == "skip" else None
    records = iter_records(unit.spec, source.text_field, f"data.sources[{source.name}]", split=source.split,
                           on_bad=on_bad, url_field=source.url_field)
    domains: dict[str, int] = {}
    keys = _BucketFiles(tmp, "exact", plan.dedup_buckets)
    band_files = _BucketFiles(tmp, "bands", plan.dedup_buckets)
    offsets, splits, doc_domains, n = [0], [], [], 0
    with (tmp / "tokens.bin").open("wb") as tokens, (tmp / "signatures.bin").open("wb") as sigs:
        while batch := list(islice(records, BATCH_DOCS)):
            docs: list[Document] = processor.process([t for t, _ in batch], source.lang, counts)
            if not docs:
                continue
            ids = doc_id(unit.index, np.arange(n, n + len(docs)))
            n += len(docs)
            for d in docs:
                tokens.write(d.tokens.astype(dtype, copy=False).tobytes())
                offsets.append(offsets[-1] + len(d.tokens))
                splits.append(SPLITS.index(d.split))
                host = domain(batch[d.index][1])
                doc_domains.append(domains.setdefault(host, len(domains)) if host else -1)
            if exact:
                k = np.frombuffer(b"".join(d.key for d in docs), dtype="<u8").reshape(-1, 2)
                rec = np.empty(len(docs), EXACT_RECORD)
                rec["k0"], rec["k1"], rec["doc"] = k[:, 0], k[:, 1], ids
                keys.append(rec, exact_bucket(rec["k0"], plan.dedup_buckets))
            if near:
                has = np.array([d.signature is not None for d in docs])
                sig = np.zeros((len(docs), cc.near_num_perm), dtype=np.uint32)
                if has.any():
                    sig[has] = np.stack([d.signature for d in docs if d.signature is not None]).astype(np.uint32)
                sigs.write(sig.tobytes())
                if has.any():
                    h = band_hashes(sig[has], bands, rows)
                    rec = np.empty(h.size, BAND_RECORD)
                    rec["band"] = np.tile(np.arange(bands, dtype=np.uint64), len(h))
                    rec["hash"] = h.reshape(-1)
                    rec["doc"] = np.repeat(ids[has], bands)
                    band_files.append(rec, band_bucket(rec["band"], rec["hash"], plan.dedup_buckets))
    keys.close()
    band_files.close()
    np.save(tmp / "offsets.npy", np.array(offsets, dtype=np.int64))
    np.save(tmp / "split.npy", np.array(splits, dtype=np.uint8))
    np.save(tmp / "domain.npy", np.array(doc_domains, dtype=np.int32))
    (tmp / "domains.json").write_text(json.dumps(list(domains), ensure_ascii=False))
    for f in tmp.iterdir():  # durable before the marker says so
        with f.open("rb") as fh:
            os.fsync(fh.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return {"source": source.name, "counts": dict(counts), "documents": n, "tokens": offsets[-1],
            "seconds": round(time.perf_counter() - t0, 3)}
