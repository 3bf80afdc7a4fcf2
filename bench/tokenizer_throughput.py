"""Single-core encode throughput of kfm's encoders against tiktoken's o200k_base, side by side.

    python bench/tokenizer_throughput.py --tokenizer runs/demo/tokenizer/tokenizer.model \
        --reference ~/.cache/kfm/reference_tokenizers/o200k_base.tiktoken [--text ko.jsonl] [--rounds 5]

Encodes the same documents with each encoder in interleaved rounds (so load on this shared
machine hits all alike) and reports the median MB/s and the ratio to the reference. Candidates:
the data pipeline's per-worker encoder (``tokenizer.fast_encode.batch_encoder``: tiktoken's BPE
engine with ranks that reproduce SentencePiece's ids, in batches of 64 documents as in
``data_pipeline.build``), SentencePiece's own ``encode`` on a list with one thread, and the Hugging
Face twin's ``encode_batch`` with Rayon pinned to one thread.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # before tokenizers starts its thread pool

import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tokenizer.config import TextSource  # noqa: E402
from tokenizer.encoders import load_encoder  # noqa: E402
from tokenizer.fast_encode import batch_encoder  # noqa: E402
from tokenizer.sampling import iter_documents  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", type=Path, default=ROOT / "runs/demo/tokenizer/tokenizer.model")
    ap.add_argument("--reference", type=Path,
                    default=Path(os.environ.get("KFM_CACHE", "~/.cache/kfm")).expanduser()
                    / "reference_tokenizers/o200k_base.tiktoken")
    ap.add_argument("--text", type=Path,
                    default=Path(os.environ.get("KFM_CACHE", "~/.cache/kfm")).expanduser() / "sample_corpus/ko.jsonl")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    import sentencepiece as spm
    import tiktoken  # noqa: F401  (fail early if missing)
    from tokenizers import Tokenizer

    docs = list(iter_documents(TextSource(path=str(args.text))))
    n_bytes = sum(len(d.encode()) for d in docs)
    sp = spm.SentencePieceProcessor(model_file=str(args.tokenizer))
    hf = Tokenizer.from_file(str(args.tokenizer.with_name("tokenizer.json")))
    ref = load_encoder(args.reference)
    pipeline = batch_encoder(args.tokenizer)

    candidates = {
        f"kfm pipeline encoder ({type(pipeline).__name__}, batches of 64)":
            lambda: [pipeline.encode_batch(docs[i : i + 64]) for i in range(0, len(docs), 64)],
        "kfm sentencepiece (list)": lambda: sp.encode(docs, num_threads=1),
        "kfm tokenizers (encode_batch)": lambda: hf.encode_batch(docs, add_special_tokens=False),
        f"{ref.name} (tiktoken)": lambda: [ref.encode(d) for d in docs],
    }
    times: dict[str, list[float]] = {k: [] for k in candidates}
    for _ in range(args.rounds):
        for name, fn in candidates.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    ref_name = f"{ref.name} (tiktoken)"
    ref_mbs = n_bytes / statistics.median(times[ref_name]) / 1e6
    print(f"{len(docs)} documents, {n_bytes / 1e6:.2f} MB of {args.text.name}, {args.rounds} interleaved rounds, "
          "single core\n")
    print("| encoder | median MB/s | vs " + ref_name + " |\n|---|---:|---:|")
    for name, ts in times.items():
        mbs = n_bytes / statistics.median(ts) / 1e6
        print(f"| {name} | {mbs:.2f} | {mbs / ref_mbs:.2f}x |")


if __name__ == "__main__":
    main()
