"""Near-duplicate detection with MinHash LSH (the ``datasketch`` library).

A document is a set of character n-gram shingles of its case-folded, whitespace-collapsed
text (characters rather than words: Korean eojeol change shape with every particle). Its
MinHash signature is computed, vectorised with NumPy, where the document is cleaned (a worker
process); datasketch's LSH index, in the process that writes shards, finds the kept documents that
share a band with it (candidates), and the document is dropped only when its estimated Jaccard
similarity to one of them (the share of equal MinHash values) reaches the threshold, across all
sources. A band collision alone is not enough: with 128 permutations at threshold 0.5 the bands
collide for ~23% of pairs at J=0.4 and ~6% at J=0.3 (bench/near_dedup.py measures both rules).
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
    return np.unique(mix64(h) & _M32)


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


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """MinHash estimate of the Jaccard similarity of two documents: the share of equal signature values."""
    return float(np.count_nonzero(a == b)) / len(a)


LSH_WEIGHTS = (0.2, 0.8)
"""datasketch's weights of false positives and false negatives when it picks the bands (its default is 0.5/0.5).
The estimate check removes the bands' false positives, so the bands favour recall: at threshold 0.5 and 128
permutations, 30 bands of 4 rows instead of 25 of 5 (bench/results/near_dedup.md: pairs at true J 0.5 / 0.6
found 0.79 / 0.95 of the time instead of 0.64 / 0.89)."""


def lsh_bands(threshold: float, num_perm: int, weights: tuple[float, float] = LSH_WEIGHTS) -> tuple[int, int]:
    """(bands, rows per band) that datasketch's ``MinHashLSH`` picks for this threshold and these weights."""
    from datasketch.lsh import _optimal_param

    return _optimal_param(threshold, num_perm, *weights)


def mix64(h: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser (wrapping uint64): spreads the bits of a polynomial hash."""
    with np.errstate(over="ignore"):
        h = h ^ (h >> np.uint64(30))
        h = h * np.uint64(0xBF58476D1CE4E5B9)
        h = h ^ (h >> np.uint64(27))
        h = h * np.uint64(0x94D049BB133111EB)
        return h ^ (h >> np.uint64(31))


def band_hashes(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """``(documents, bands)`` 64-bit hashes of each band of rows of ``(documents, num_perm)`` signatures: two
    documents share a band's hash when (up to 64-bit collisions) they share all its values."""
    x = signatures[:, : bands * rows].astype(np.uint64).reshape(len(signatures), bands, rows)
    h = np.zeros(x.shape[:2], dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(rows):
            h = h * np.uint64(1000003) + x[:, :, j]
    return mix64(h)


class NearDuplicateIndex:
    """``seen(key, signature)`` is True when a kept document's estimated Jaccard similarity reaches
    ``threshold``; else remembers it. Holds every kept signature (4 bytes a permutation, 512 B a document at
    128) to check the candidates the LSH bands give."""

    def __init__(self, threshold: float, num_perm: int, weights: tuple[float, float] = LSH_WEIGHTS) -> None:
        self.num_perm, self.threshold = num_perm, threshold
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=weights)
        self.signatures: dict = {}

    def _minhash(self, values: np.ndarray) -> MinHash:
        return MinHash(num_perm=self.num_perm, seed=SEED, hashvalues=values, scheme=SCHEME)

    def add(self, key, values: np.ndarray) -> None:
        self.lsh.insert(key, self._minhash(values), check_duplication=False)
        self.signatures[key] = values.astype(np.uint32)

    def candidates(self, values: np.ndarray) -> list:
        """Kept documents that share at least one LSH band with ``values``."""
        return self.lsh.query(self._minhash(values))

    def match(self, values: np.ndarray):
        """The first kept document whose estimated Jaccard similarity to ``values`` reaches the threshold."""
        sig = values.astype(np.uint32)
        for key in self.candidates(values):
            if estimated_jaccard(self.signatures[key], sig) >= self.threshold:
                return key
        return None

    def seen(self, key, values: np.ndarray | None) -> bool:
        if values is None:
            return False
        if self.match(values) is not None:
            return True
        self.add(key, values)
        return False
