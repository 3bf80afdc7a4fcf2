"""Stages 2 and 3 of the staged build: duplicates across every task, in memory bounded per bucket.

``buckets`` (one item per bucket, in parallel): the bucket's exact keys and LSH band hashes from every
unit, sorted. A document whose key an earlier document (in input order: source, file, record) has is an
exact duplicate. Documents that share a band hash are candidates; a document is a near duplicate when an
earlier candidate's estimated Jaccard similarity to it (the share of equal MinHash values, read from the
units' signature files) reaches ``data.clean.near_threshold``, the check of the one-machine build. The
bucket writes the duplicates it found, split into ``dedup_buckets`` parts by unit.

``removals`` (one item per part, in parallel): a part's duplicates from every bucket, as the list of
removed documents of each of its units (``exact`` when an earlier document has the same key, else ``near``).

This is the shape of datatrove's four-stage MinHash (signatures, buckets, cluster, filter) without the
clustering: a document goes when any earlier document is similar to it, so only removed documents are
held, never pairs. The result does not depend on how many tasks or buckets there are. Unlike the
one-machine build, which compares each document with the kept ones only, a chain A~B~C (C not similar to
A) removes C too.
"""

from __future__ import annotations

import os
import shutil

import numpy as np

from kfm.data_pipeline.config import DataConfig
from kfm.data_pipeline.staged.layout import Plan, WorkDir
from kfm.data_pipeline.staged.scan import BAND_RECORD, EXACT_RECORD, split_id

MAX_GROUP_COMPARE = 64
"""A candidate is compared with at most this many earlier members of its band group (a bound on the
quadratic work of a huge group: thousands of copies of one page are caught through their neighbours)."""
DUPLICATE = np.dtype([("doc", "<u8"), ("exact", "u1")])
REMOVED = np.dtype([("ordinal", "<u4"), ("exact", "u1")])


def _read(work: WorkDir, plan: Plan, name: str, dtype: np.dtype) -> np.ndarray:
    parts = []
    for u in range(len(plan.units)):
        path = work.unit_dir(u) / name
        if path.is_file():
            parts.append(np.fromfile(path, dtype=dtype))
    return np.concatenate(parts) if parts else np.empty(0, dtype)


def _groups(*keys: np.ndarray) -> np.ndarray:
    """Start index of each run of equal keys (the arrays already sorted by them), plus the end."""
    n = len(keys[0])
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    new = np.zeros(n, dtype=bool)
    new[0] = True
    for k in keys:
        new[1:] |= k[1:] != k[:-1]
    return np.append(np.flatnonzero(new), n)


def exact_duplicates(records: np.ndarray) -> np.ndarray:
    """Documents whose key an earlier document has."""
    records = records[np.lexsort((records["doc"], records["k1"], records["k0"]))]
    first = np.zeros(len(records), dtype=bool)
    first[_groups(records["k0"], records["k1"])[:-1]] = True
    return records["doc"][~first]


class _Signatures:
    """MinHash signatures of any document, read row by row from its unit's file (``pread``: a memory map's
    touched pages would count in the task's RSS, up to every unit's whole signature file)."""

    def __init__(self, work: WorkDir, num_perm: int) -> None:
        self.work, self.num_perm, self.files = work, num_perm, {}

    def __call__(self, docs: np.ndarray) -> np.ndarray:
        units, ordinals = split_id(docs)
        row = 4 * self.num_perm
        out = np.empty((len(docs), self.num_perm), dtype=np.uint32)
        for i, (u, k) in enumerate(zip(units.tolist(), ordinals.tolist())):
            if u not in self.files:
                self.files[u] = (self.work.unit_dir(u) / "signatures.bin").open("rb")
            out[i] = np.frombuffer(os.pread(self.files[u].fileno(), row, k * row), dtype=np.uint32)
        return out

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def near_duplicates(records: np.ndarray, signatures, threshold: float) -> tuple[np.ndarray, int]:
    """Documents with an earlier band-sharing document at estimated Jaccard >= ``threshold``; and how many
    pairs were compared. ``signatures(docs)`` gives their MinHash values."""
    records = records[np.lexsort((records["doc"], records["hash"], records["band"]))]
    starts = _groups(records["band"], records["hash"])
    found, compared = [], 0
    for g in np.flatnonzero(np.diff(starts) > 1):
        docs = records["doc"][starts[g] : starts[g + 1]]
        sig = signatures(docs)
        need = threshold * sig.shape[1]
        for lo in range(0, len(docs), MAX_GROUP_COMPARE):  # blocks of members against the window before them
            hi = min(len(docs), lo + MAX_GROUP_COMPARE)
            w0 = max(0, lo - MAX_GROUP_COMPARE)
            equal = (sig[w0:hi, None, :] == sig[None, lo:hi, :]).sum(-1)  # (earlier, member)
            earlier = np.arange(w0, hi)[:, None] < np.arange(lo, hi)[None, :]
            window = np.arange(w0, hi)[:, None] >= np.arange(lo, hi)[None, :] - MAX_GROUP_COMPARE
            mask = earlier & window
            compared += int(mask.sum())
            hit = ((equal >= need) & mask).any(axis=0)
            found.append(docs[lo:hi][hit])
    out = np.concatenate(found) if found else np.empty(0, np.uint64)
    return np.unique(out), compared


def _save(path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def bucket_duplicates(work: WorkDir, plan: Plan, cfg: DataConfig, bucket: int) -> dict:
    """Stage buckets for one bucket: its duplicates into ``dups/<bucket>/<part>.npy`` (part: unit mod parts)."""
    cc = cfg.clean
    exact = exact_duplicates(_read(work, plan, f"exact_{bucket:05d}.bin", EXACT_RECORD))
    bands = _read(work, plan, f"bands_{bucket:05d}.bin", BAND_RECORD)
    signatures = _Signatures(work, cc.near_num_perm)
    near, compared = near_duplicates(bands, signatures, cc.near_threshold)
    signatures.close()
    dups = np.empty(len(exact) + len(near), DUPLICATE)
    dups["doc"] = np.concatenate([exact, near])
    dups["exact"] = np.arange(len(dups)) < len(exact)
    part = split_id(dups["doc"])[0] % plan.dedup_buckets
    folder = work.duplicates(bucket)
    shutil.rmtree(folder, ignore_errors=True)
    for p in range(plan.dedup_buckets):
        _save(folder / f"{p:05d}.npy", dups[part == p])
    return {"exact": len(exact), "near": len(near), "band_records": len(bands), "near_compared": compared}


def removals(work: WorkDir, plan: Plan, part: int) -> dict:
    """Stage removals for one part: ``removed/<unit>.npy`` for each of its units that loses documents."""
    dups = np.concatenate([np.load(work.duplicates(b) / f"{part:05d}.npy") for b in range(plan.dedup_buckets)])
    docs, inverse = np.unique(dups["doc"], return_inverse=True)
    exact = np.zeros(len(docs), dtype=bool)
    np.logical_or.at(exact, inverse, dups["exact"].astype(bool))  # exact wins over near
    units, ordinals = split_id(docs)
    for u in range(part, len(plan.units), plan.dedup_buckets):
        sel = units == u
        path = work.removed(u)
        path.unlink(missing_ok=True)
        if sel.any():
            rec = np.empty(int(sel.sum()), REMOVED)
            rec["ordinal"], rec["exact"] = ordinals[sel], exact[sel]
            _save(path, rec)
    return {"removed_exact": int(exact.sum()), "removed_near": int((~exact).sum())}
