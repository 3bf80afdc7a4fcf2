"""Near-duplicate detection with MinHash LSH (the ``datasketch`` library).

A document is a set of character n-gram shingles of its case-folded, whitespace-collapsed
text (characters rather than words: Korean eojeol change shape with every particle). Its
MinHash signature is computed where the document is cleaned (a worker process); the index,
in the process that writes shards, drops a document whose estimated Jaccard similarity to
one already kept reaches the threshold, across all sources.
"""

from __future__ import annotations

import numpy as np
from datasketch import MinHash, MinHashLSH

SCHEME = "affine32"
SEED = 1


def shingles(text: str, n: int) -> set[bytes]:
    norm = " ".join(text.casefold().split())
    return {norm[i : i + n].encode() for i in range(max(0, len(norm) - n + 1))}


def signature(text: str, num_perm: int, n: int) -> np.ndarray | None:
    """MinHash values of the text's shingles, or ``None`` for a text shorter than one shingle."""
    grams = shingles(text, n)
    if not grams:
        return None
    m = MinHash(num_perm=num_perm, seed=SEED, scheme=SCHEME)
    m.update_batch(list(grams))
    return m.hashvalues


class NearDuplicateIndex:
    """``seen(key, signature)`` is True when a near-duplicate was kept before; else remembers it."""

    def __init__(self, threshold: float, num_perm: int) -> None:
        self.num_perm = num_perm
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)

    def seen(self, key, values: np.ndarray | None) -> bool:
        if values is None:
            return False
        m = MinHash(num_perm=self.num_perm, seed=SEED, hashvalues=values, scheme=SCHEME)
        if self.lsh.query(m):
            return True
        self.lsh.insert(key, m, check_duplication=False)
        return False
