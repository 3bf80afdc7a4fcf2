"""Near-duplicate detection with MinHash LSH (the ``datasketch`` library).

A document is a set of character n-gram shingles of its case-folded, whitespace-collapsed
text (characters rather than words: Korean eojeol change shape with every particle). Its
MinHash signature is computed, vectorised with NumPy, where the document is cleaned (a worker
process); datasketch's LSH index, in the process that writes shards, drops a document whose
estimated Jaccard similarity to one already kept reaches the threshold, across all sources.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from datasketch import MinHash, MinHashLSH

SCHEME = "affine32"
SEED = 1


_M32 = np.uint64(0xFFFFFFFF)
_PRIME = np.uint64((1 << 61) - 1)


def _normalised(text: str) -> str:
    return " ".join(text.casefold().split())


def shingles(text: str, n: int) -> set[str]:
    """The character n-grams of the case-folded, whitespace-collapsed text (the set MinHash estimates)."""
    norm = _normalised(text)
    return {norm[i : i + n] for i in range(max(0, len(norm) - n + 1))}


@lru_cache(maxsize=8)
def _permutations(num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED)
    a = rng.integers(1, 1 << 32, num_perm, dtype=np.uint64)[:, None]
    b = rng.integers(0, 1 << 32, num_perm, dtype=np.uint64)[:, None]
    return a, b


def shingle_hashes(text: str, n: int) -> np.ndarray:
    """Distinct 32-bit hashes of the text's character n-grams, computed with NumPy.

    A polynomial hash over code points (wrapping uint64), then the splitmix64 finaliser to spread
    the bits; about 3x faster than hashing each shingle in Python.
    """
    cps = np.frombuffer(_normalised(text).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    count = len(cps) - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = np.zeros(count, dtype=np.uint64)
        for j in range(n):
            h = h * np.uint64(1000003) + cps[j : j + count]
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return np.unique(h & _M32)


def signature(text: str, num_perm: int, n: int) -> np.ndarray | None:
    """MinHash values (min over shingles of ``(a*h + b) mod (2^61 - 1)``, 32 bits, one per permutation),
    or ``None`` for a text shorter than one shingle."""
    hashes = shingle_hashes(text, n)
    if not len(hashes):
        return None
    a, b = _permutations(num_perm)
    out = np.full(num_perm, _M32, dtype=np.uint64)
    for i in range(0, len(hashes), 2048):
        block = hashes[None, i : i + 2048]
        out = np.minimum(out, (((a * block + b) % _PRIME) & _M32).min(axis=1))  # a*h+b < 2^64: no overflow
    return out


class NearDuplicateIndex:
    """``seen(key, signature)`` is True when a near-duplicate was kept before; else remembers it."""

    def __init__(self, threshold: float, num_perm: int) -> None:
        self.num_perm = num_perm
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)

    def _minhash(self, values: np.ndarray) -> MinHash:
        return MinHash(num_perm=self.num_perm, seed=SEED, hashvalues=values, scheme=SCHEME)

    def add(self, key, values: np.ndarray) -> None:
        self.lsh.insert(key, self._minhash(values), check_duplication=False)

    def seen(self, key, values: np.ndarray | None) -> bool:
        if values is None:
            return False
        m = self._minhash(values)
        if self.lsh.query(m):
            return True
        self.lsh.insert(key, m, check_duplication=False)
        return False
