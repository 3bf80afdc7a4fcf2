"""Out-of-domain compression: train the tokenizer without one Korean source, score it on that source.

    python bench/tokenizer_loso.py [--vocab 32768] [--variants subword super10 ...]

The sample corpus's Korean text comes from four sources (`source` field of ko.jsonl): LibreOffice help (1.58 MB),
GIMP help (0.24 MB), the Debian FAQ (0.11 MB) and the KoNLPy law and bill corpora (0.10 MB). For each source S
and each recipe variant, kfm's tokenizer (``tokenizer.train``) is trained on the mixture of
configs/tokenizer/sample.yaml with S removed from the Korean part (``--sentences`` sampled sentences, fewer than
the corpus holds, so that the shares matter), then scored in Korean tokens per 1,000 Hangul syllables (lower is
better) on all of S (out of domain) and on the held-out documents of the other Korean sources (in domain), with
English and code token counts on the sample's held-out split, the round trip, and whether the HF twin and the
tiktoken batch encoder give SentencePiece's ids on every line. Variants:

- ``subword``: SentencePiece BPE alone (ko 0.6 / en 0.25 / code 0.15 of the sampled sentences), the recipe
  until superwords won here;
- ``ko80``: a larger Korean share of the sample (ko 0.8 / en 0.12 / code 0.08);
- ``maxlen8``: pieces of at most 8 characters (SentencePiece's ``max_sentencepiece_length``, default 16);
- ``balanced``: Korean sources weighted by the square root of their size; ``unigram``: SentencePiece unigram;
  ``nospace``: SentencePiece BPE with ``split_by_whitespace=false`` (superwords from the first merge on);
- ``super05`` / ``super10`` / ``super20``: the last 5 / 10 / 20% of the vocabulary learned as superword pieces
  (``tokenizer.superword``, SuperBPE's second stage) joining at most 8 first-stage pieces; ``super10p4``: at most 4.
  ``super10`` is kfm's default recipe (which rounds the superword share to whole 128s: 3,328 pieces at 32,768
  where this bench takes exactly 10%, 3,276).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tokenizer_trainers import fit_sentencepiece, sentencepiece_encoder  # noqa: E402

from kfm.tokenizer.config import TextSource, TokenizerConfig  # noqa: E402
from kfm.tokenizer.encoders import load_encoder  # noqa: E402
from kfm.tokenizer.evaluate import measure  # noqa: E402
from kfm.tokenizer.fast_encode import batch_encoder  # noqa: E402
from kfm.tokenizer.hf import build_fast_tokenizer  # noqa: E402
from kfm.tokenizer.sampling import is_heldout, sample_mixture  # noqa: E402
from kfm.tokenizer.superword import add_superwords  # noqa: E402

DEFAULT_SHARES = {"ko": 0.6, "en": 0.25, "code": 0.15}


@dataclasses.dataclass
class Variant:
    shares: dict = dataclasses.field(default_factory=lambda: DEFAULT_SHARES)
    extra: dict = dataclasses.field(default_factory=dict)
    """Further SentencePiece trainer options."""
    alpha: float = 1.0
    """Korean sources weighted by size ** alpha."""
    model_type: str = "bpe"
    superwords: float = 0.0
    """Share of the vocabulary learned as superword pieces (SuperBPE's second stage)."""
    max_parts: int = 8


VARIANTS = {
    "subword": Variant(),
    "ko80": Variant(shares={"ko": 0.8, "en": 0.12, "code": 0.08}),
    "maxlen8": Variant(extra={"max_sentencepiece_length": 8}),
    "balanced": Variant(alpha=0.5),
    "unigram": Variant(model_type="unigram"),
    "nospace": Variant(extra={"split_by_whitespace": False}),
    "super05": Variant(superwords=0.05),
    "super10": Variant(superwords=0.10),
    "super20": Variant(superwords=0.20),
    "super10p4": Variant(superwords=0.10, max_parts=4),
}


def split_korean(sample: Path, out: Path) -> dict[str, Path]:
    """ko.jsonl as one file per source (the part of ``source`` before the first ``/``)."""
    files: dict[str, list[str]] = defaultdict(list)
    for line in (sample / "ko.jsonl").read_text(encoding="utf-8").split("\n"):
        if line.strip():
            files[json.loads(line)["source"].split("/")[0].split(":")[1]].append(line)
    paths = {}
    for name, lines in files.items():
        paths[name] = out / f"ko_{name}.jsonl"
        paths[name].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths


def texts(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def twin_parity(model: Path, docs: list[str]) -> float:
    """Share of lines on which the HF twin and the data pipeline's batch encoder give SentencePiece's ids."""
    sp = load_encoder(model)
    hf = build_fast_tokenizer(model)
    fast = batch_encoder(model)
    lines = [ln for d in docs for ln in d.split("\n") if ln]
    same = [a == hf.encode(ln, add_special_tokens=False).ids == b.tolist()
            for ln, a, b in zip(lines, map(sp.encode, lines), fast.encode_batch(lines))]
    return sum(same) / len(lines)


def main() -> None:
    cache = Path(os.environ.get("KFM_CACHE", "~/.cache/kfm")).expanduser()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sample", type=Path, default=cache / "sample_corpus")
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--variants", nargs="+", default=["subword", "ko80", "maxlen8", "super05", "super10", "super20",
                                                      "super10p4"])
    ap.add_argument("--sentences", type=int, default=20000,
                    help="sampled training sentences (fewer than the corpus holds, so that the shares matter)")
    args = ap.parse_args()
    cfg = TokenizerConfig(model_type="bpe", sample_sentences=args.sentences, superword_fraction=0.0)  # stage 2 below
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        korean = split_korean(args.sample, tmp)
        other = {s: [d for d in texts(args.sample / f"{s}.jsonl") if is_heldout(d, cfg.heldout_fraction)]
                 for s in ("en", "code")}
        for left_out in korean:
            out_docs = texts(korean[left_out])
            in_docs = [d for name, p in korean.items() if name != left_out for d in texts(p)
                       if is_heldout(d, cfg.heldout_fraction)]
            for variant in args.variants:
                v = VARIANTS[variant]
                weights = v.shares
                ko = [n for n in korean if n != left_out]
                sizes = {n: korean[n].stat().st_size ** v.alpha for n in ko}
                sources = [TextSource(path=str(korean[n]), weight=weights["ko"] * sizes[n] / sum(sizes.values()))
                           for n in ko]
                sources += [TextSource(path=str(args.sample / f"{s}.jsonl"), weight=weights[s]) for s in ("en", "code")]
                sentences, _ = sample_mixture(sources, cfg.sample_sentences, cfg.max_sentence_chars, cfg.seed,
                                              cfg.heldout_fraction)
                n_super = int(args.vocab * v.superwords)
                model = fit_sentencepiece(sentences, dataclasses.replace(cfg, sources=sources, model_type=v.model_type),
                                          args.vocab - n_super, **v.extra)
                if n_super:
                    model = add_superwords(model, sentences, n_super, v.max_parts)
                enc = sentencepiece_encoder(f"{variant}-{left_out}", model, tmp)
                results[(left_out, variant)] = {
                    "out": measure(enc, out_docs), "in": measure(enc, in_docs), "vocab": enc.vocab_size,
                    **{s: measure(enc, docs)["tokens"] for s, docs in other.items()}}
                r = results[(left_out, variant)]
                r["parity"] = twin_parity(tmp / f"{variant}-{left_out}.model", out_docs + in_docs)
                print(f"without {left_out}, {variant}: vocab {r['vocab']}, out of domain "
                      f"{r['out']['tokens_per_1k_hangul']}, in domain {r['in']['tokens_per_1k_hangul']}", flush=True)
    print(f"\nKorean tokens per 1,000 Hangul syllables (lower is better); SentencePiece BPE asked {args.vocab:,} pieces\n")
    print("| left out (trained without) | " + " | ".join(f"{v}: out of domain | {v}: in domain" for v in args.variants)
          + " |")
    print("|---|" + "---:|---:|" * len(args.variants))
    for left_out in korean:
        cells = [f"{results[(left_out, v)]['out']['tokens_per_1k_hangul']} | "
                 f"{results[(left_out, v)]['in']['tokens_per_1k_hangul']}" for v in args.variants]
        print(f"| {left_out} | " + " | ".join(cells) + " |")
    print("\nEnglish and code held-out tokens (the sample's held-out split), summed over the folds\n")
    print("| variant | en tokens | code tokens |\n|---|---:|---:|")
    for v in args.variants:
        print(f"| {v} | {sum(r['en'] for (_, vv), r in results.items() if vv == v):,} | "
              f"{sum(r['code'] for (_, vv), r in results.items() if vv == v):,} |")
    for v in args.variants:
        rt = min(min(r["out"]["roundtrip_exact"], r["in"]["roundtrip_exact"]) for (_, vv), r in results.items() if vv == v)
        print(f"{v}: round trip exact on every line of both sets: {100 * rt:.2f}% (the worst fold)")
        same = min(r["parity"] for (_, vv), r in results.items() if vv == v)
        print(f"{v}: HF twin and batch encoder give SentencePiece's ids on {100 * same:.2f}% of the lines "
              "(the worst fold)")


if __name__ == "__main__":
    main()
