"""Single-core encode throughput on held-out text, per language: kfm's encoder against SentencePiece (the same
ids) and against tiktoken's o200k_base (a different vocabulary), side by side.

    python bench/tokenizer_throughput.py --tokenizer runs/demo/tokenizer/tokenizer.model \
        --reference ~/.cache/kfm/reference_tokenizers/o200k_base.tiktoken [--corpus ~/.cache/kfm/sample_corpus]
        [--rounds 9]

Only documents the tokenizer was not trained on (its held-out split, ``tokenizer.sampling.is_heldout`` with the
fraction in ``train_stats.json``) of each language file (``ko.jsonl``, ``en.jsonl``, ``code.jsonl``) are
encoded: training documents encode faster (their merges were learnt on them). Each language's documents go
through every encoder in interleaved rounds (load on this shared machine hits all alike); the table gives the
median MB/s, the spread over rounds (min-max; each round repeats an encoder for at least ``--min-seconds``) and the ratio of medians to SentencePiece and to o200k_base.

kfm's encoder is the data pipeline's (``tokenizer.fast_encode.batch_encoder``: tiktoken's BPE engine with ranks
that reproduce SentencePiece's ids, batches of 64 documents as in ``data_pipeline.build``); the bench checks
that its ids equal SentencePiece's on every document. SentencePiece runs ``encode`` on the list with one
thread, the Hugging Face twin ``encode_batch`` with Rayon pinned to one thread.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # before tokenizers starts its thread pool

import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kfm.tokenizer.config import TextSource  # noqa: E402
from kfm.tokenizer.encoders import load_encoder  # noqa: E402
from kfm.tokenizer.fast_encode import batch_encoder  # noqa: E402
from kfm.tokenizer.sampling import is_heldout, iter_documents  # noqa: E402

KFM, SP, HF = "kfm encoder (tiktoken engine, SentencePiece ids)", "SentencePiece", "HF tokenizers twin"


def heldout_docs(path: Path, fraction: float) -> list[str]:
    return [d for d in iter_documents(TextSource(path=str(path))) if is_heldout(d, fraction)]


def main() -> None:
    cache = Path(os.environ.get("KFM_CACHE", "~/.cache/kfm")).expanduser()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", type=Path, default=ROOT / "runs/demo/tokenizer/tokenizer.model")
    ap.add_argument("--reference", type=Path, default=cache / "reference_tokenizers/o200k_base.tiktoken")
    ap.add_argument("--corpus", type=Path, default=cache / "sample_corpus")
    ap.add_argument("--langs", nargs="+", default=["ko", "en", "code"])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--min-seconds", type=float, default=0.3,
                    help="each measurement repeats the encode until this long (the held-out sets are small)")
    args = ap.parse_args()

    import sentencepiece as spm
    from tokenizers import Tokenizer

    stats = json.loads((args.tokenizer.parent / "train_stats.json").read_text())
    fraction = stats["config"]["heldout_fraction"]
    sp = spm.SentencePieceProcessor(model_file=str(args.tokenizer))
    hf = Tokenizer.from_file(str(args.tokenizer.with_name("tokenizer.json")))
    ref = load_encoder(args.reference)
    ref_name = f"{ref.name} (tiktoken, another vocabulary)"
    pipeline = batch_encoder(args.tokenizer)
    print(f"tokenizer {args.tokenizer} ({sp.get_piece_size()} pieces); held-out split: is_heldout at fraction "
          f"{fraction} (documents the tokenizer was not trained on); {args.rounds} interleaved rounds, one core\n")
    print(f"| lang | docs | MB | encoder | median MB/s | min-max MB/s | vs {SP} | vs {ref.name} |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for lang in args.langs:
        docs = heldout_docs(args.corpus / f"{lang}.jsonl", fraction)
        n_bytes = sum(len(d.encode()) for d in docs)
        ours = [ids for i in range(0, len(docs), 64) for ids in pipeline.encode_batch(docs[i : i + 64])]
        same = sum(list(map(int, a)) == b for a, b in zip(ours, sp.encode(docs)))
        if same != len(docs):
            raise SystemExit(f"{lang}: kfm's encoder gives other ids than SentencePiece on {len(docs) - same} of "
                             f"{len(docs)} held-out documents")
        candidates = {
            KFM: lambda: [pipeline.encode_batch(docs[i : i + 64]) for i in range(0, len(docs), 64)],
            SP: lambda: sp.encode(docs, num_threads=1),
            HF: lambda: hf.encode_batch(docs, add_special_tokens=False),
            ref_name: lambda: [ref.encode(d) for d in docs],
        }
        rates: dict[str, list[float]] = {k: [] for k in candidates}
        for _ in range(args.rounds):
            for name, fn in candidates.items():
                t0, reps = time.perf_counter(), 0
                while (elapsed := time.perf_counter() - t0) < args.min_seconds or not reps:
                    fn()
                    reps += 1
                rates[name].append(reps * n_bytes / elapsed / 1e6)
        med = {k: statistics.median(v) for k, v in rates.items()}
        for name, r in rates.items():
            print(f"| {lang} | {len(docs)} | {n_bytes / 1e6:.2f} | {name} | {med[name]:.2f} | {min(r):.2f}-{max(r):.2f}"
                  f" | {med[name] / med[SP]:.2f}x | {med[name] / med[ref_name]:.2f}x |")
        print(f"| {lang} | | | ids identical to SentencePiece | {same} of {len(docs)} documents | | | |")


if __name__ == "__main__":
    main()
