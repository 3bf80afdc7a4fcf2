"""Stages 2 and 3 of the staged build: duplicates across every task, in memory bounded per bucket.

``buckets`` (one item per bucket, in parallel): the bucket's exact keys and LSH band hashes from every
unit, sorted. Documents with the same key are exact duplicates. Documents that share a band hash are
candidates; a pair becomes an edge only when its estimated Jaccard similarity (the share of equal MinHash
values, read from the units' signature files) reaches ``data.clean.near_threshold``, as in the one-machine
build. This is the shape of datatrove's four-stage MinHash (signatures, buckets, cluster, filter).

``cluster`` (one task): the connected components of all edges; every document but the first of its
component (in input order: source, file, record) is removed, as ``exact`` when a document before it has
the same key, else ``near``. The edges, and so the result, do not depend on how many tasks or buckets
there are. Unlike the one-machine build, which compares each document with the kept ones only, a chain
A~B~C removes C even when C is not similar to A.
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
quadratic work of a huge group: thousands of copies of one page are linked through their neighbours)."""
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


def exact_edges(records: np.ndarray) -> np.ndarray:
    """(first, other) for every document whose key an earlier one has."""
    records = records[np.lexsort((records["doc"], records["k1"], records["k0"]))]
    starts = _groups(records["k0"], records["k1"])
    sizes = np.diff(starts)
    first = np.repeat(records["doc"][starts[:-1]], sizes)
    dup = np.ones(len(records), dtype=bool)
    dup[starts[:-1]] = False
    return np.stack([first[dup], records["doc"][dup]], axis=1)


class _Signatures:
    """MinHash signatures of any document, read from its unit's file (memory-mapped)."""

    def __init__(self, work: WorkDir, num_perm: int) -> None:
        self.work, self.num_perm, self.maps = work, num_perm, {}

    def __call__(self, docs: np.ndarray) -> np.ndarray:
        units, ordinals = split_id(docs)
        out = np.empty((len(docs), self.num_perm), dtype=np.uint32)
        for u in np.unique(units):
            if u not in self.maps:
                self.maps[u] = np.memmap(self.work.unit_dir(int(u)) / "signatures.bin", dtype=np.uint32,
                                         mode="r").reshape(-1, self.num_perm)
            sel = units == u
            out[sel] = self.maps[u][ordinals[sel]]
        return out


def near_edges(records: np.ndarray, signatures: _Signatures, threshold: float) -> tuple[np.ndarray, int]:
    """Verified (earlier, later) pairs among documents that share a band hash; and how many were compared."""
    records = records[np.lexsort((records["doc"], records["hash"], records["band"]))]
    starts = _groups(records["band"], records["hash"])
    big = np.flatnonzero(np.diff(starts) > 1)
    edges, compared = [], 0
    for g in big:
        docs = records["doc"][starts[g] : starts[g + 1]]
        sig = signatures(docs)
        for j in range(1, len(docs)):
            lo = max(0, j - MAX_GROUP_COMPARE)
            share = np.count_nonzero(sig[lo:j] == sig[j], axis=1) / sig.shape[1]
            compared += j - lo
            hits = lo + np.flatnonzero(share >= threshold)
            edges.extend((docs[i], docs[j]) for i in hits)
    out = np.array(edges, dtype=np.uint64).reshape(-1, 2)
    return (np.unique(out, axis=0) if len(out) else out), compared


def _save_npz(path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def bucket_edges(work: WorkDir, plan: Plan, cfg: DataConfig, bucket: int) -> dict:
    """Stage buckets for one bucket: its duplicate edges into ``edges/<bucket>.npz``."""
    cc = cfg.clean
    exact = exact_edges(_read(work, plan, f"exact_{bucket:05d}.bin", EXACT_RECORD))
    bands = _read(work, plan, f"bands_{bucket:05d}.bin", BAND_RECORD)
    near, compared = near_edges(bands, _Signatures(work, cc.near_num_perm), cc.near_threshold)
    _save_npz(work.edges(bucket), exact=exact, near=near)
    return {"exact_edges": len(exact), "near_edges": len(near), "band_records": len(bands),
            "near_compared": compared}


def components(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nodes sorted, index of each node's component's first node) of an undirected edge list."""
    nodes = np.unique(edges)
    e = np.searchsorted(nodes, edges)
    label = np.arange(len(nodes))
    while True:  # min-label propagation with pointer jumping: labels only ever fall to a node of the component
        m = np.minimum(label[e[:, 0]], label[e[:, 1]])
        new = label.copy()
        np.minimum.at(new, e[:, 0], m)
        np.minimum.at(new, e[:, 1], m)
        new = new[new]
        if np.array_equal(new, label):
            return nodes, label
        label = new


def cluster(work: WorkDir, plan: Plan) -> dict:
    """Stage cluster: ``removed/<unit>.npy`` for every unit that loses documents."""
    exact, near = [], []
    for b in range(plan.dedup_buckets):
        with np.load(work.edges(b)) as z:
            exact.append(z["exact"])
            near.append(z["near"])
    exact, near = np.concatenate(exact), np.concatenate(near)
    folder = work.root / "removed"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    edges = np.concatenate([exact, near])
    if not len(edges):
        return {"removed_exact": 0, "removed_near": 0, "edges": 0}
    nodes, label = components(edges)
    removed = nodes[label != np.arange(len(nodes))]
    is_exact = np.isin(removed, exact[:, 1])
    units, ordinals = split_id(removed)
    for u in np.unique(units):
        sel = units == u
        rec = np.empty(int(sel.sum()), REMOVED)
        rec["ordinal"], rec["exact"] = ordinals[sel], is_exact[sel]
        tmp = work.removed(int(u)).with_suffix(".partial.npy")
        np.save(tmp, rec)
        os.replace(tmp, work.removed(int(u)))
    return {"removed_exact": int(is_exact.sum()), "removed_near": int((~is_exact).sum()), "edges": len(edges),
            "clusters": int(len(np.unique(label)))}
