"""A corpus many times larger than the sample, by a documented deterministic transformation (benchmarks only).

Copy ``k`` of a text moves every Hangul syllable 7k places in the syllable block (U+AC00-U+D7A3) and maps
Latin letters through a permutation drawn with seed ``k``; digits, punctuation and spacing stay. No copy
duplicates another (for k < 1,596), document lengths and the work per byte of cleaning, MinHash and
tokenizing stay those of the sample, but the text is no longer Korean or English: compression and filter
figures measured on it mean nothing.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HANGUL0, HANGUL_N = 0xAC00, 11172


def copy_table(k: int) -> dict[int, int]:
    """``str.translate`` table of copy ``k`` (a shift of letters by k would repeat every 26 copies)."""
    table = {HANGUL0 + i: HANGUL0 + (i + 7 * k) % HANGUL_N for i in range(HANGUL_N)}
    letters = list(range(26))
    random.Random(k).shuffle(letters)
    for i, j in enumerate(letters):
        table[97 + i], table[65 + i] = 97 + j, 65 + j
    return table


def sample_documents(sample: Path, source: str) -> list[str]:
    """The texts of ``<sample>/<source>.jsonl`` (split on newlines only: texts hold U+2028)."""
    lines = (sample / f"{source}.jsonl").read_text(encoding="utf-8").split("\n")
    return [json.loads(line)["text"] for line in lines if line.strip()]


def enlarged_texts(sample: Path, sources: tuple[str, ...] = ("ko", "en", "code")):
    """Copy 0, 1, 2, ... of every document of the sources, without end (the caller stops)."""
    docs = {s: sample_documents(sample, s) for s in sources}
    k = 0
    while True:
        table = copy_table(k) if k else {}
        for s in sources:
            for d in docs[s]:
                yield s, d.translate(table)
        k += 1
