"""Compare tokenizer trainers on the same sentences and vocabulary size, on held-out text.

    python bench/tokenizer_trainers.py [--vocab 65536] [--kiwi] [--out bench/results/tokenizer_trainers.md]

Variants: SentencePiece unigram and BPE (kfm's recipe: identity normalisation, byte fallback,
split digits, whitespace kept), Hugging Face ``tokenizers`` byte-level BPE, and with ``--kiwi``
SentencePiece BPE trained on Kiwi morpheme boundaries (``pip install kiwipiepy`` first;
``pretokenization_delimiter`` is training-only, so encoding stays lossless). A variant that
cannot reach the vocabulary on this corpus is trained at the largest size it supports. The training sentences are the sample mixture of
``configs/tokenizer/sample.yaml`` minus the held-out documents, which are the test text.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import kfm.tokenizer.train  # noqa: E402,F401  (registers the job schema)
from kfm.tokenizer.config import SPECIAL_TOKENS, control_tokens  # noqa: E402
from kfm.tokenizer.encoders import Encoder, load_encoder  # noqa: E402
from kfm.tokenizer.evaluate import EvalSet, load_set, measure  # noqa: E402
from kfm.tokenizer.sampling import sample_mixture  # noqa: E402
from kfm.tokenizer.train import VocabTooLarge, train_sentencepiece  # noqa: E402

DELIM = "\u241f"  # SYMBOL FOR UNIT SEPARATOR: never in the corpus, removed by the trainer


def fit_sentencepiece(sentences: list[str], cfg, vocab: int, **extra) -> bytes:
    """Train at ``vocab``, or at the largest multiple of 128 the sentences support (reported in the table)."""
    try:
        return train_sentencepiece(sentences, cfg, vocab, **extra)
    except VocabTooLarge as err:
        print(f"  {cfg.model_type}{' ' + str(extra) if extra else ''}: {err.limit} pieces at most; "
              f"training {err.limit // 128 * 128}")
        return train_sentencepiece(sentences, cfg, err.limit // 128 * 128, **extra)


def sentencepiece_encoder(name: str, model: bytes, tmp: Path) -> Encoder:
    path = tmp / f"{name}.model"
    path.write_bytes(model)
    enc = load_encoder(path)
    enc.name = name
    return enc


def bytelevel_bpe(sentences: list[str], vocab: int, num_reserved: int, tmp: Path) -> Encoder:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [*SPECIAL_TOKENS.values(), *control_tokens(num_reserved)]
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(sentences, trainer)
    path = tmp / "hf-bytelevel-bpe" / "tokenizer.json"
    path.parent.mkdir()
    tok.save(str(path))
    return load_encoder(path)


def kiwi_segment(sentences: list[str]) -> list[str]:
    """Mark Kiwi morpheme starts inside words with DELIM (text itself unchanged once DELIM is removed)."""
    from kiwipiepy import Kiwi

    kiwi = Kiwi()
    out = []
    for sent, tokens in zip(sentences, kiwi.tokenize(sentences)):
        cuts = sorted({t.start for t in tokens if 0 < t.start < len(sent) and not sent[t.start - 1].isspace()
                       and not sent[t.start].isspace()})
        pieces, last = [], 0
        for c in cuts:
            pieces.append(sent[last:c])
            last = c
        pieces.append(sent[last:])
        out.append(DELIM.join(pieces))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=65536)
    ap.add_argument("--kiwi", action="store_true", help="also train on Kiwi morpheme boundaries")
    ap.add_argument("--references", nargs="*", default=[], help=".tiktoken / tokenizer.json / .model files")
    ap.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides of configs/tokenizer_train.yaml")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tokenizer_trainers.md")
    args = ap.parse_args()

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = OmegaConf.to_object(compose(config_name="tokenizer_train", overrides=args.overrides)).tokenizer
    sentences, _ = sample_mixture(cfg.sources, cfg.sample_sentences, cfg.max_sentence_chars, cfg.seed,
                                  cfg.heldout_fraction)
    sets = {Path(s.path).stem: load_set(EvalSet(name=Path(s.path).stem, path=s.path), cfg.heldout_fraction, 5000)
            for s in cfg.sources}
    print(f"{len(sentences)} training sentences; held-out docs: { {k: len(v) for k, v in sets.items()} }")

    encoders, train_seconds = [], {}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        variants = {
            "sp-unigram": lambda: sentencepiece_encoder(
                "sp-unigram", fit_sentencepiece(sentences, dataclasses.replace(cfg, model_type="unigram", superword_fraction=0.0),
                                                args.vocab),
                tmp),
            "sp-bpe": lambda: sentencepiece_encoder(
                "sp-bpe", fit_sentencepiece(sentences, dataclasses.replace(cfg, model_type="bpe"), args.vocab), tmp),
            "hf-bytelevel-bpe": lambda: bytelevel_bpe(sentences, args.vocab, cfg.num_reserved_tokens, tmp),
        }
        if args.kiwi:
            def kiwi_bpe():
                segmented = kiwi_segment(sentences)
                bpe = dataclasses.replace(cfg, model_type="bpe")
                model = fit_sentencepiece(segmented, bpe, args.vocab, pretokenization_delimiter=DELIM)
                return sentencepiece_encoder("sp-bpe-kiwi", model, tmp)
            variants["sp-bpe-kiwi"] = kiwi_bpe
        for name, build in variants.items():
            t0 = time.perf_counter()
            encoders.append(build())
            train_seconds[name] = round(time.perf_counter() - t0, 1)
            print(f"trained {name} in {train_seconds[name]} s", flush=True)
        encoders += [load_encoder(p) for p in args.references]
        results = {s: {e.name: {**measure(e, docs), "vocab_size": e.vocab_size} for e in encoders}
                   for s, docs in sets.items()}

    lines = [f"# Tokenizer trainers at vocabulary {args.vocab} (held-out split of the sample corpus)", "",
             f"Training sentences: {len(sentences)}; training seconds: {train_seconds}", "",
             "| tokenizer | vocab | " + " | ".join(f"{s} tokens" for s in sets) + " | ko tokens/1k Hangul "
             "| ko round trip | en round trip | code round trip |",
             "|---|" + "---:|" * (len(sets) + 5)]
    for e in encoders:
        row = [f"{results[s][e.name]['tokens']:,}" for s in sets]
        ko = results.get("ko", {}).get(e.name, {})
        rts = [f"{100 * results[s][e.name]['roundtrip_exact']:.2f}%" for s in ("ko", "en", "code") if s in results]
        lines.append(f"| {e.name} | {e.vocab_size:,} | " + " | ".join(row) + f" | {ko.get('tokens_per_1k_hangul', '-')} | "
                     + " | ".join(rts) + " |")
    report = "\n".join(lines) + "\n"
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    args.out.with_suffix(".json").write_text(json.dumps({"vocab": args.vocab, "results": results,
                                                        "train_seconds": train_seconds}, indent=2))


if __name__ == "__main__":
    main()
