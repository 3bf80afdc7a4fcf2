"""Tokenizer trainers at the vocabulary sizes of the Korean flagships, on inputs of 100 MB and more: time and
peak memory.

    python bench/tokenizer_scale.py [--sizes 100 500] [--vocabs 65536 153600] [--trainers sp-bpe hf-bpe]

The input is the sample corpus enlarged by ``bench/enlarge.py`` (no larger real text exists on this machine)
to ``--sizes`` MB of ko/en/code documents, cut into lines of at most ``tokenizer.max_sentence_chars``, in
one text file. Each trainer runs in its own process on every line of it (no sampling), streamed from the file,
with the default tokenizer config otherwise:

- ``sp-bpe``: kfm's recipe (``tokenizer.train.train_sentencepiece``: SentencePiece BPE, identity
  normalisation, byte fallback, split digits, KS X 1001 syllables required), ``num_threads`` = cores;
- ``sp-bpe-super``: ``sp-bpe`` at ``vocab - 10%``, then kfm's superword stage (``tokenizer.superword``, the
  default recipe since the leave-one-source-out benchmark) for the last 10% on the same lines;
- ``hf-bpe``: Hugging Face ``tokenizers`` byte-level BPE (``bench/tokenizer_trainers.py``'s), all cores.

Each process reports its wall seconds and its peak RSS (``ru_maxrss``). A run past ``--timeout`` seconds is
stopped and reported as such. Compression on this text means nothing (its letters are permuted per copy),
so none is reported; the trainers' compression on real held-out text is bench/tokenizer_trainers.py's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from enlarge import enlarged_texts  # noqa: E402

from kfm.tokenizer.config import TokenizerConfig  # noqa: E402


def write_input(sample: Path, path: Path, mb: float, max_chars: int) -> int:
    """``mb`` MB of enlarged documents as lines of at most ``max_chars`` characters; returns the line count."""
    size, lines = 0, 0
    with path.open("w", encoding="utf-8") as f:
        for _, text in enlarged_texts(sample):
            for line in text.split("\n"):
                for i in range(0, len(line), max_chars):
                    piece = line[i : i + max_chars]
                    if piece.strip():
                        f.write(piece + "\n")
                        size += len(piece.encode()) + 1
                        lines += 1
            if size >= mb * 1e6:
                return lines


def lines_of(path: Path):
    with path.open(encoding="utf-8") as f:
        for line in f:
            yield line.rstrip("\n")


def train(trainer: str, vocab: int, path: Path, out: Path) -> dict:
    """In the child process: train, return what was learnt."""
    cfg = TokenizerConfig(num_threads=os.cpu_count() or 1)
    t0 = time.perf_counter()
    if trainer in ("sp-bpe", "sp-bpe-super"):
        import sentencepiece as spm

        from kfm.tokenizer.superword import add_superwords
        from kfm.tokenizer.train import train_sentencepiece

        n_super = round(vocab * cfg.superword_fraction) if trainer == "sp-bpe-super" else 0
        model = train_sentencepiece(lines_of(path), cfg, vocab - n_super)
        if n_super:
            first = time.perf_counter() - t0
            model = add_superwords(model, lines_of(path), n_super, cfg.superword_max_parts)
            print(f"first stage {first:.1f} s, superword stage {time.perf_counter() - t0 - first:.1f} s",
                  file=sys.stderr)

        learnt = spm.SentencePieceProcessor(model_proto=model).get_piece_size()
    else:
        from tokenizer_trainers import bytelevel_bpe

        enc = bytelevel_bpe(lines_of(path), vocab, cfg.num_reserved_tokens, out)
        learnt = enc.vocab_size
    return {"seconds": round(time.perf_counter() - t0, 1), "learnt": learnt,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    cache = Path(os.environ.get("KFM_CACHE", "~/.cache/kfm")).expanduser()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[100, 500])
    ap.add_argument("--vocabs", type=int, nargs="+", default=[65536, 153600])
    ap.add_argument("--trainers", nargs="+", default=["sp-bpe", "sp-bpe-super", "hf-bpe"])
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--sample", type=Path, default=cache / "sample_corpus")
    ap.add_argument("--tmp", default=None)
    ap.add_argument("--child", nargs=4, metavar=("TRAINER", "VOCAB", "INPUT", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        trainer, vocab, path, out = args.child
        print(json.dumps(train(trainer, int(vocab), Path(path), Path(out))))
        return
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        for mb in args.sizes:
            path = tmp / f"input_{mb:g}MB.txt"
            n = write_input(args.sample, path, mb, TokenizerConfig.max_sentence_chars)
            print(f"input {mb:g} MB: {n:,} lines ({path.stat().st_size / 1e6:.1f} MB)", flush=True)
            for vocab in args.vocabs:
                for trainer in args.trainers:
                    out = tmp / f"{trainer}_{vocab}_{mb:g}"
                    out.mkdir()
                    try:
                        done = subprocess.run([sys.executable, __file__, "--child", trainer, str(vocab), str(path),
                                               str(out)], capture_output=True, text=True, timeout=args.timeout)
                        if done.returncode:
                            row = {"error": done.stderr.strip().splitlines()[-1][:120]}
                        else:
                            row = json.loads(done.stdout.strip().splitlines()[-1])
                            if done.stderr.strip():
                                row["note"] = done.stderr.strip().splitlines()[-1]
                    except subprocess.TimeoutExpired:
                        row = {"error": f"stopped after {args.timeout:.0f} s"}
                    rows.append({"trainer": trainer, "mb": mb, "vocab": vocab, **row})
                    print(rows[-1], flush=True)
            path.unlink()
    print(f"\n{os.cpu_count()} cores; every line of the input, no sampling\n")
    print("| trainer | input MB | vocab asked | vocab learnt | seconds | peak RSS MB |\n|---|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['trainer']} | {r['mb']:g} | {r['vocab']:,} | - | {r['error']} | - |")
        else:
            print(f"| {r['trainer']} | {r['mb']:g} | {r['vocab']:,} | {r['learnt']:,} | {r['seconds']} | "
                  f"{r['peak_rss_mb']:,} |")


if __name__ == "__main__":
    main()
