"""Precision and recall of near-duplicate detection on planted near-duplicates of real paragraphs.

    python bench/near_dedup.py [--corpus ~/.cache/kfm/sample_corpus/ko.jsonl] [--plant 300] [--edit-rate 0.05]

Takes real Korean paragraphs (>= 100 characters) from the sample corpus, first drops those the
index already finds near-duplicate among themselves (templated help text), then plants edited
copies of ``--plant`` of them: each copy has ``--edit-rate`` of its words replaced, deleted or
joined by a random corpus word, and some spacing and punctuation changed. Everything is shuffled
and streamed through ``data_pipeline.near_dedup.NearDuplicateIndex`` with the default
``data.clean`` settings (or ``--threshold`` / ``--shingle``). A flagged document is a true positive when its planted partner came
before it; recall counts the planted pairs with a flagged member.
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

from data_pipeline.config import CleanConfig  # noqa: E402
from data_pipeline.near_dedup import NearDuplicateIndex, signature  # noqa: E402
from tokenizer.config import TextSource  # noqa: E402
from tokenizer.sampling import iter_documents  # noqa: E402


def edit(text: str, rate: float, vocab: list[str], rng: random.Random) -> str:
    words = text.split(" ")
    out = []
    for w in words:
        r = rng.random()
        if r < rate / 3:
            out.append(rng.choice(vocab))  # replace
        elif r < 2 * rate / 3:
            continue  # delete
        elif r < rate:
            out += [w, rng.choice(vocab)]  # insert
        else:
            out.append(w)
    text = " ".join(out)
    if rng.random() < 0.5:
        text = text.replace(". ", ".  ", 1).replace(",", "", 1)
    return text


def main() -> None:
    cache = Path(os.environ.get("KFM_CACHE", "~/.cache/kfm")).expanduser()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=cache / "sample_corpus" / "ko.jsonl")
    ap.add_argument("--plant", type=int, default=300)
    ap.add_argument("--edit-rate", type=float, nargs="+", default=[0.03, 0.05, 0.1])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threshold", type=float, default=CleanConfig.near_threshold)
    ap.add_argument("--shingle", type=int, default=CleanConfig.near_shingle_chars)
    args = ap.parse_args()
    cfg = CleanConfig(near_threshold=args.threshold, near_shingle_chars=args.shingle)

    def sig(t):
        return signature(t, cfg.near_num_perm, cfg.near_shingle_chars)

    paragraphs = [p for d in iter_documents(TextSource(path=str(args.corpus))) for p in d.split("\n") if len(p) >= 100]
    pre = NearDuplicateIndex(cfg.near_threshold, cfg.near_num_perm)
    originals = [p for i, p in enumerate(paragraphs) if not pre.seen(i, sig(p))]
    vocab = sorted({w for p in originals for w in p.split()})
    print(f"{len(paragraphs)} paragraphs >= 100 chars, {len(originals)} after removing their own near-duplicates; "
          f"threshold {cfg.near_threshold}, {cfg.near_num_perm} permutations, {cfg.near_shingle_chars}-char shingles\n")
    print("| edit rate | planted pairs | flagged | precision | recall | docs/s |\n|---:|---:|---:|---:|---:|---:|")
    for rate in args.edit_rate:
        rng = random.Random(args.seed)
        planted = rng.sample(range(len(originals)), min(args.plant, len(originals)))
        docs = [(p, i) for i, p in enumerate(originals)] + [(edit(originals[i], rate, vocab, rng), i) for i in planted]
        rng.shuffle(docs)
        index = NearDuplicateIndex(cfg.near_threshold, cfg.near_num_perm)
        seen_group: set[int] = set()
        tp = fp = 0
        hit_pairs: set[int] = set()
        t0 = time.perf_counter()
        for key, (text, group) in enumerate(docs):
            if index.seen(key, sig(text)):
                if group in seen_group and group in planted:
                    tp += 1
                    hit_pairs.add(group)
                else:
                    fp += 1
            seen_group.add(group)
        secs = time.perf_counter() - t0
        flagged = tp + fp
        precision = tp / flagged if flagged else 1.0
        recall = len(hit_pairs) / len(planted)
        print(f"| {rate:.2f} | {len(planted)} | {flagged} | {precision:.3f} | {recall:.3f} | {len(docs) / secs:.0f} |")


if __name__ == "__main__":
    main()
