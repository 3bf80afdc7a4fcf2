"""MinHash LSH near-duplicate detection: planted edited copies are found, distinct texts are not."""

import random

import numpy as np
import pytest

from kfm.data_pipeline.config import CleanConfig
from kfm.data_pipeline.near_dedup import NearDuplicateIndex, estimated_jaccard, shingle_hashes, shingles, signature

SYLLABLES = [chr(c) for c in range(0xAC00, 0xD7A4, 7)]


def random_paragraph(rng: random.Random, words: int = 40) -> str:
    return " ".join("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(words)) + "."


def edited(text: str, rng: random.Random, rate: float) -> str:
    words = text.split(" ")
    for i in rng.sample(range(len(words)), max(1, int(rate * len(words)))):
        words[i] = random_paragraph(rng, 1)[:-1]
    return " ".join(words)


def test_planted_near_duplicates_precision_and_recall():
    rng, cfg = random.Random(0), CleanConfig()
    originals = [random_paragraph(rng) for _ in range(300)]
    copies = [(edited(originals[i], rng, 0.05), i) for i in range(0, 300, 3)]
    docs = [(t, i) for i, t in enumerate(originals)] + copies
    rng.shuffle(docs)
    index, seen, tp, fp = NearDuplicateIndex(cfg.near_threshold, cfg.near_num_perm), set(), 0, 0
    for key, (text, group) in enumerate(docs):
        if index.seen(key, signature(text, cfg.near_num_perm, cfg.near_shingle_chars)):
            tp, fp = (tp + 1, fp) if group in seen else (tp, fp + 1)
        seen.add(group)
    assert tp / max(1, tp + fp) >= 0.95 and tp / len(copies) >= 0.90


def test_short_text_has_no_signature_and_is_never_a_duplicate():
    cfg = CleanConfig()
    assert signature("짧음", cfg.near_num_perm, cfg.near_shingle_chars) is None
    index = NearDuplicateIndex(cfg.near_threshold, cfg.near_num_perm)
    assert not index.seen(0, None) and not index.seen(1, None)


def test_shingles_ignore_case_and_spacing():
    assert shingles("Hello   World", 5) == shingles("hello world", 5)
    assert len(shingle_hashes("Hello   World", 5)) == len(shingles("hello world", 5)) == 7


def test_signature_estimates_jaccard():
    rng = random.Random(1)
    for _ in range(20):
        a = random_paragraph(rng, 60)
        b = edited(a, rng, rng.choice([0.05, 0.2, 0.5]))
        true = len(shingles(a, 5) & shingles(b, 5)) / len(shingles(a, 5) | shingles(b, 5))
        est = (signature(a, 256, 5) == signature(b, 256, 5)).mean()
        assert abs(est - true) < 0.12, (est, true)
    assert (signature(a, 128, 5) == signature(a, 128, 5)).all()


def _pair_sharing_one_band(index: NearDuplicateIndex, agreement: float, rng: np.random.Generator):
    """Two signatures that share the first LSH band and agree on ``agreement`` of all positions."""
    a = rng.integers(0, 1 << 32, index.num_perm, dtype=np.uint64)
    b = rng.integers(0, 1 << 32, index.num_perm, dtype=np.uint64)  # a fresh value differs from a's (2^-32)
    rows = index.lsh.r
    same = set(range(rows)) | set(rng.permutation(np.arange(rows, index.num_perm))[: round(agreement * index.num_perm)
                                                                                  - rows].tolist())
    b[list(same)] = a[list(same)]
    return a, b


@pytest.mark.parametrize("agreement, dropped", [(0.25, False), (0.35, False), (0.45, False), (0.5, True),
                                                (0.7, True)])
def test_a_band_collision_below_the_threshold_is_kept(agreement, dropped):
    """A shared band only makes a candidate: the document goes when the estimated Jaccard similarity reaches
    the threshold (0.5), not before (the band collision alone dropped all of these)."""
    cfg, rng = CleanConfig(), np.random.default_rng(int(agreement * 100))
    index = NearDuplicateIndex(cfg.near_threshold, cfg.near_num_perm)
    a, b = _pair_sharing_one_band(index, agreement, rng)
    assert estimated_jaccard(a, b) == pytest.approx(agreement, abs=0.5 / cfg.near_num_perm)
    assert not index.seen("a", a)
    assert index.candidates(b) == ["a"]  # the bands collide
    assert index.seen("b", b) is dropped
