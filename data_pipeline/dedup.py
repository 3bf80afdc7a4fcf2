"""Exact and near-duplicate removal across all sources, with state that survives an interrupted build.

Every key and MinHash signature the index remembers is also appended to a file under the
build's state folder; ``sync()`` makes them durable and returns their counts, which the build
journal records, and a resumed build reloads exactly that many (``restore``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from kfm.data_pipeline.near_dedup import NearDuplicateIndex

KEY_BYTES = 16


def dedup_key(text: str) -> bytes:
    """Exact-duplicate key: the text case-folded with whitespace collapsed, hashed."""
    return hashlib.blake2b(" ".join(text.casefold().split()).encode(), digest_size=KEY_BYTES).digest()


class AppendLog:
    """Fixed-size records appended to a file; reopened cut back to ``count`` records."""

    def __init__(self, path: Path, record_bytes: int, count: int = 0) -> None:
        self.path, self.record_bytes = path, record_bytes
        size = count * record_bytes
        if count and (not path.exists() or path.stat().st_size < size):
            raise ValueError(f"{path}: holds fewer than the {count} records the build journal names; "
                             "delete the output folder and build again")
        with path.open("ab") as f:
            f.truncate(size)
        self.count = count
        self._f = path.open("ab")

    def append(self, record: bytes) -> None:
        assert len(record) == self.record_bytes
        self._f.write(record)
        self.count += 1

    def sync(self) -> int:
        self._f.flush()
        os.fsync(self._f.fileno())
        return self.count

    def records(self) -> np.ndarray:
        """All records as a ``(count, record_bytes)`` uint8 array."""
        self._f.flush()
        data = np.fromfile(self.path, dtype=np.uint8, count=self.count * self.record_bytes)
        return data.reshape(self.count, self.record_bytes)

    def close(self) -> None:
        self._f.close()


class Deduplicator:
    """``check(key, signature)``: ``"exact"``/``"near"`` for a duplicate of a kept document, else None
    (and the document is remembered)."""

    def __init__(self, state_dir: Path, exact: bool, near: bool, threshold: float, num_perm: int,
                 counts: tuple[int, int] = (0, 0)) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.exact, self.near, self.num_perm = exact, near, num_perm
        self.seen: set[bytes] = set()
        self.index = NearDuplicateIndex(threshold, num_perm)
        self._keys = AppendLog(state_dir / "exact_keys.bin", KEY_BYTES, counts[0])
        self._sigs = AppendLog(state_dir / "near_signatures.bin", KEY_BYTES + 8 * num_perm, counts[1])
        self.seen.update(bytes(r) for r in self._keys.records())
        for r in self._sigs.records():
            self.index.add(bytes(r[:KEY_BYTES]), r[KEY_BYTES:].view(np.uint64))

    def check(self, key: bytes, signature: np.ndarray | None) -> str | None:
        if self.exact:
            if key in self.seen:
                return "exact"
            self.seen.add(key)
            self._keys.append(key)
        if self.near and signature is not None:
            if self.index.seen(key, signature):
                return "near"
            self._sigs.append(key + signature.astype(np.uint64).tobytes())
        return None

    def sync(self) -> tuple[int, int]:
        return self._keys.sync(), self._sigs.sync()

    def close(self) -> None:
        self._keys.close()
        self._sigs.close()
