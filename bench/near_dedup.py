"""Precision and recall of near-duplicate detection against the true Jaccard similarity of planted pairs.

    python bench/near_dedup.py [--corpus ~/.cache/kfm/sample_corpus/ko.jsonl] [--per-bin 150]

Takes real Korean paragraphs (>= 100 characters) from the sample corpus, all of them (the corpus's own near
duplicates stay in: removing what the index flags first would hide its false positives), and plants edited
copies of some of them at true Jaccard similarity 0.2, 0.3, ..., 0.9 of their character-shingle sets (each
copy has words replaced, deleted or inserted until its similarity to its original falls within 0.05 of the
bin). Everything is shuffled and streamed through ``data_pipeline.near_dedup.NearDuplicateIndex`` with the
default ``data.clean`` settings, twice side by side: kfm's rule (drop when the MinHash estimate against an LSH
candidate reaches the threshold) and the rule before it (drop on any LSH band collision).

A flagged document is correct when an earlier kept document's true shingle Jaccard similarity to it reaches
the threshold (checked against every kept document). Per bin: the share of planted pairs whose later member
was flagged (should be ~0 below the threshold, ~1 above: recall there), and the precision of all flags.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kfm.data_pipeline.config import CleanConfig  # noqa: E402
from kfm.data_pipeline.near_dedup import NearDuplicateIndex, shingles, signature  # noqa: E402
from kfm.tokenizer.config import TextSource  # noqa: E402
from kfm.tokenizer.sampling import iter_documents  # noqa: E402

BINS = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def jaccard(a: set, b: set) -> float:
    return len(a & b) / max(1, len(a | b))


def edit_once(words: list[str], vocab: list[str], rng: random.Random) -> list[str]:
    i, r = rng.randrange(len(words)), rng.random()
    if r < 1 / 3:
        return words[:i] + [rng.choice(vocab)] + words[i + 1 :]  # replace
    if r < 2 / 3 and len(words) > 3:
        return words[:i] + words[i + 1 :]  # delete
    return words[:i] + [rng.choice(vocab)] + words[i:]  # insert


def planted_copy(text: str, target: float, n: int, vocab: list[str], rng: random.Random) -> str | None:
    """An edited copy of ``text`` whose true shingle Jaccard similarity to it is within 0.05 of ``target``."""
    base, words = shingles(text, n), text.split(" ")
    for _ in range(4 * len(words)):
        words = edit_once(words, vocab, rng)
        j = jaccard(base, shingles(" ".join(words), n))
        if abs(j - target) <= 0.05:
            return " ".join(words)
        if j < target - 0.05:
            return None
    return None


class BandCollisionIndex(NearDuplicateIndex):
    """The rule before: any shared LSH band drops the document (bands by datasketch's default weights)."""

    def __init__(self, threshold: float, num_perm: int) -> None:
        super().__init__(threshold, num_perm, weights=(0.5, 0.5))

    def match(self, values):
        found = self.candidates(values)
        return found[0] if found else None


def run(rule: type[NearDuplicateIndex], docs, cfg: CleanConfig, sigs, sets):
    index = rule(cfg.near_threshold, cfg.near_num_perm)
    kept: list[int] = []
    flagged: set[int] = set()
    t0 = time.perf_counter()
    for key in range(len(docs)):
        if index.seen(key, sigs[key]):
            flagged.add(key)
        elif sigs[key] is not None:
            kept.append(key)
    secs = time.perf_counter() - t0
    wrong = {key for key in flagged  # no earlier kept document is truly similar enough
             if not any(jaccard(sets[key], sets[k]) >= cfg.near_threshold for k in kept if k < key)}
    return flagged, wrong, len(docs) / secs


def main() -> None:
    cache = Path(os.environ.get("KFM_CACHE", "~/.cache/kfm")).expanduser()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=cache / "sample_corpus" / "ko.jsonl")
    ap.add_argument("--per-bin", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threshold", type=float, default=CleanConfig.near_threshold)
    ap.add_argument("--shingle", type=int, default=CleanConfig.near_shingle_chars)
    args = ap.parse_args()
    cfg = CleanConfig(near_threshold=args.threshold, near_shingle_chars=args.shingle)
    rng = random.Random(args.seed)

    paragraphs = [p for d in iter_documents(TextSource(path=str(args.corpus))) for p in d.split("\n") if len(p) >= 100]
    vocab = sorted({w for p in paragraphs for w in p.split()})
    docs = [(p, None) for p in paragraphs]  # (text, (original index, bin) for a planted copy)
    for b in BINS:
        made = 0
        for i in rng.sample(range(len(paragraphs)), len(paragraphs)):
            if made == args.per_bin:
                break
            copy = planted_copy(paragraphs[i], b, cfg.near_shingle_chars, vocab, rng)
            if copy is not None:
                docs.append((copy, (i, b)))
                made += 1
    order = list(range(len(docs)))
    rng.shuffle(order)
    docs = [docs[i] for i in order]
    where = {orig: pos for pos, orig in enumerate(order)}  # paragraph index -> its position in the stream
    sigs = [signature(t, cfg.near_num_perm, cfg.near_shingle_chars) for t, _ in docs]
    sets = [shingles(t, cfg.near_shingle_chars) for t, _ in docs]
    print(f"{len(paragraphs)} real paragraphs >= 100 chars (none removed) + {len(docs) - len(paragraphs)} planted "
          f"copies; threshold {cfg.near_threshold}, {cfg.near_num_perm} permutations, {cfg.near_shingle_chars}-char "
          f"shingles; seed {args.seed}\n")
    results = {name: run(rule, docs, cfg, sigs, sets) for name, rule in
               (("kfm: estimate >= threshold", NearDuplicateIndex), ("before: any band collision", BandCollisionIndex))}
    names = list(results)
    print("Share of planted pairs whose later member was flagged; in brackets, flagged wrongly (no earlier kept "
          "document at true J >= threshold: a false positive)\n")
    print("| true Jaccard | pairs | " + " | ".join(names) + " |")
    print("|---:|---:|" + "---:|" * len(names))
    for b in BINS:
        later = [max(pos, where[g[0]]) for pos, (_, g) in enumerate(docs) if g is not None and g[1] == b]
        cells = []
        for name in names:
            flagged, wrong = results[name][:2]
            cells.append(f"{sum(k in flagged for k in later) / len(later):.3f} "
                         f"({sum(k in wrong for k in later) / len(later):.3f})")
        print(f"| {b:.1f} | {len(later)} | " + " | ".join(cells) + " |")
    print("\n| rule | flagged | wrongly | precision | docs/s |\n|---|---:|---:|---:|---:|")
    for name, (flagged, wrong, rate) in results.items():
        print(f"| {name} | {len(flagged)} | {len(wrong)} | {1 - len(wrong) / max(1, len(flagged)):.3f} | {rate:.0f} |")


if __name__ == "__main__":
    main()
