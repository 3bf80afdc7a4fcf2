"""Stream sentences out of text files and sample a weighted mixture without loading them whole."""

from __future__ import annotations

import hashlib
import random
import unicodedata
from collections.abc import Iterator

from kfm.tokenizer.config import TextSource
from kfm.tokenizer.readers import CorpusError, iter_texts

__all__ = ["CorpusError", "is_heldout", "iter_documents", "iter_sentences", "reservoir_sample", "sample_mixture"]


def iter_documents(source: TextSource) -> Iterator[str]:
    """Texts of one tokenizer source (a file, or ``hf:<dataset>``)."""
    yield from iter_texts(source.path, source.text_field, "tokenizer.sources[*]", split=source.split)


def is_heldout(text: str, fraction: float) -> bool:
    """Stable document split: held out when a hash of the NFC text falls below ``fraction``.

    The data pipeline uses the same rule for its validation split, so with equal fractions the
    tokenizer never sees the language model's validation documents either.
    """
    key = unicodedata.normalize("NFC", text).encode()
    h = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
    return h / 2**64 < fraction


def iter_sentences(source: TextSource, max_chars: int, heldout_fraction: float = 0.0) -> Iterator[str]:
    """Non-empty lines of every training document, cut to at most ``max_chars`` characters.

    Documents in the held-out split (``is_heldout``) are skipped.
    """
    for doc in iter_documents(source):
        if heldout_fraction and is_heldout(doc, heldout_fraction):
            continue
        for line in doc.split("\n"):
            if not line.strip():
                continue
            for start in range(0, len(line), max_chars):
                yield line[start : start + max_chars]


def reservoir_sample(items: Iterator[str], k: int, rng: random.Random) -> tuple[list[str], int]:
    """Uniform sample of ``k`` items in one pass and O(k) memory (Algorithm R); also returns the count seen."""
    sample: list[str] = []
    n = 0
    for n, item in enumerate(items, 1):
        if len(sample) < k:
            sample.append(item)
        else:
            j = rng.randrange(n)
            if j < k:
                sample[j] = item
    return sample, n


def sample_mixture(sources: list[TextSource], total: int, max_chars: int, seed: int,
                   heldout_fraction: float = 0.0) -> tuple[list[str], dict]:
    """Sample ``total`` sentences, source i contributing ``total * w_i / sum(w)`` of them.

    A source with fewer sentences than its share contributes all it has. Returns the sentences
    (shuffled) and per-source counts.
    """
    if not sources:
        raise CorpusError("tokenizer.sources is empty: name at least one text file to train on")
    weight_sum = sum(s.weight for s in sources)
    rng = random.Random(seed)
    out: list[str] = []
    stats = {}
    for src in sources:
        quota = max(1, round(total * src.weight / weight_sum))
        picked, seen = reservoir_sample(iter_sentences(src, max_chars, heldout_fraction), quota, rng)
        if seen == 0:
            raise CorpusError(f"tokenizer source {src.path!r} holds no text: check the file and its text_field")
        out.extend(picked)
        stats[src.path] = {"sentences_seen": seen, "sentences_sampled": len(picked)}
    rng.shuffle(out)
    return out, stats
