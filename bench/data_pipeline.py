"""Throughput of the data pipeline on the sample corpus: the build (clean + dedup + tokenize +
write, ``data.num_workers`` processes) and the loader (tokens/s from one process).

    python bench/data_pipeline.py [--tokenizer runs/demo/tokenizer/tokenizer.model] [--workers 2]

Builds into a temporary folder with the sample data config (``configs/data/sample.yaml``), then
reads ``--batches`` batches of ``--batch x --seq`` tokens through ``DistributedLoader`` with the
per-document positions and ``cu_seqlens`` the trainer receives. Then times each stage of
cleaning alone in this process, PII scrubbing side by side with its plain reference.
"""

from __future__ import annotations

import argparse
from collections import Counter
import sys
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import data_pipeline.build  # noqa: E402,F401  (registers the job schema)
from data_pipeline.build import build_shards  # noqa: E402
from data_pipeline.loader import DistributedLoader, MixtureStream  # noqa: E402
from data_pipeline.clean import drop_boilerplate, normalize_text  # noqa: E402
from data_pipeline.near_dedup import signature  # noqa: E402
from data_pipeline.pii import scrub, scrub_reference  # noqa: E402
from data_pipeline.reader import iter_documents  # noqa: E402
from tokenizer.fast_encode import batch_encoder  # noqa: E402


def stage_times(cfg, tokenizer: Path) -> None:
    """Seconds per stage over the whole corpus in one process (interleaved A/B for PII)."""
    docs = [(s.lang, t) for s in cfg.sources for t in iter_documents(s) if t and t.strip()]
    mb = sum(len(t.encode()) for _, t in docs) / 1e6
    texts = [normalize_text(t, lang) for lang, t in docs]
    encoder = batch_encoder(str(tokenizer))
    stages = {
        "normalize (NFC, control chars, markup)": lambda: [normalize_text(t, lang) for lang, t in docs],
        "boilerplate lines": lambda: [drop_boilerplate(t, 80, Counter()) for t in texts],
        "PII scrub": lambda: [scrub(t, Counter()) for t in texts],
        "PII scrub, plain reference": lambda: [scrub_reference(t) for t in texts],
        "MinHash signatures": lambda: [signature(t, 128, 5) for t in texts],
        "tokenize": lambda: encoder.encode_batch(texts),
    }
    best = {name: float("inf") for name in stages}
    for _ in range(3):
        for name, fn in stages.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    print(f"stages, one process, {mb:.2f} MB, best of 3:")
    for name, s in best.items():
        print(f"  {name:40s} {s:6.2f} s  {mb / s:7.2f} MB/s")
    print(f"  PII scrub is {best['PII scrub, plain reference'] / best['PII scrub']:.1f}x its plain reference")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", type=Path, default=ROOT / "runs/demo/tokenizer/tokenizer.model")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batches", type=int, default=300)
    args = ap.parse_args()

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        job = OmegaConf.to_object(compose(config_name="data_build", overrides=[f"data.num_workers={args.workers}"]))
    cfg = job.data
    raw_bytes = sum(len(t.encode()) for s in cfg.sources for t in iter_documents(s))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        manifest = build_shards(cfg, args.tokenizer, Path(tmp) / "data")
        build_s = time.perf_counter() - t0
        tokens = sum(manifest.stats["tokens"].values())
        print(f"build: {raw_bytes / 1e6:.2f} MB of text in {build_s:.1f} s with {args.workers} worker processes: "
              f"{raw_bytes / 1e6 / build_s:.2f} MB/s, {tokens / build_s:,.0f} tokens/s written "
              "(clean + PII + filters + exact and near dedup + tokenize + write, process start-up included)")

        stream = MixtureStream(Path(tmp) / "data", args.seq, None, seed=0)
        loader = DistributedLoader(stream, args.batch, 0, 1)
        loader.next_batch()  # warm the page cache and permutations
        t0 = time.perf_counter()
        for _ in range(args.batches):
            loader.next_batch()
        load_s = time.perf_counter() - t0
        n = args.batches * args.batch * args.seq
        print(f"loader: {n:,} tokens in {load_s:.2f} s from one process: {n / load_s / 1e6:.1f}M tokens/s "
              f"(batches of {args.batch} x {args.seq}, with position ids and cu_seqlens)")
    stage_times(cfg, args.tokenizer)


if __name__ == "__main__":
    main()
