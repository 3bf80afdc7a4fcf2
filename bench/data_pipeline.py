"""Throughput of the data pipeline on the sample corpus: the build (clean + dedup + tokenize +
write, ``data.num_workers`` processes) and the loader (tokens/s from one process, cold and warm page cache).

    python bench/data_pipeline.py [--tokenizer runs/demo/tokenizer/tokenizer.model] [--workers 2]

Builds into a temporary folder with the sample data config (``configs/data/sample.yaml``), then
reads ``--batches`` batches of ``--batch x --seq`` tokens through ``DistributedLoader`` with the
per-document positions and ``cu_seqlens`` the trainer receives. Then times each stage of
cleaning alone in this process, PII scrubbing side by side with its plain reference.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import kfm.data_pipeline.build  # noqa: E402,F401  (registers the job schema)
from kfm.data_pipeline.build import build_shards  # noqa: E402
from kfm.data_pipeline.clean import drop_boilerplate, normalize_text  # noqa: E402
from kfm.data_pipeline.loader import DistributedLoader, MixtureStream  # noqa: E402
from kfm.data_pipeline.near_dedup import signature  # noqa: E402
from kfm.data_pipeline.pii import scrub, scrub_reference  # noqa: E402
from kfm.data_pipeline.reader import iter_documents  # noqa: E402
from kfm.tokenizer.fast_encode import batch_encoder  # noqa: E402


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


def drop_page_cache(root: Path) -> int:
    """Evict ``root``'s files from the page cache (flushed first, then ``POSIX_FADV_DONTNEED``): the next read
    comes from the disk. Returns the number of files."""
    n = 0
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            n += 1
    return n


def synthetic_shards(root: Path, gib: float, vocab: int = 65536, doc_tokens: int = 2000) -> Path:
    """A data folder of ``gib`` GiB of random token documents (train and a little val), with its manifest: for
    reads that the sample corpus (a few MB) is too small to show."""
    import numpy as np

    from kfm.data_pipeline.shards import Manifest, ShardWriter, token_dtype

    dtype, rng = token_dtype(vocab), np.random.default_rng(0)
    n_docs = int(gib * 2**30 / dtype.itemsize / doc_tokens)
    writers = {s: ShardWriter(root, s, "synthetic", dtype, 50_000_000) for s in ("train", "val")}
    for i in range(n_docs):
        writers["val" if i % 1000 == 0 else "train"].write(rng.integers(3, vocab, doc_tokens, dtype=np.int64))
    manifest = Manifest(vocab_size=vocab, dtype=dtype.name, tokenizer_sha256="synthetic")
    manifest.shards = [x for w in writers.values() for x in w.close()]
    manifest.save(root)
    return root


def loader_rate(data: Path, args, batches: int, warm_up: bool = False) -> float:
    """Tokens/s of ``batches`` batches from a fresh stream and loader (the first batch timed unless ``warm_up``)."""
    loader = DistributedLoader(MixtureStream(data, args.seq, None, seed=0), args.batch, 0, 1)
    if warm_up:
        loader.next_batch()
    t0 = time.perf_counter()
    for _ in range(batches):
        loader.next_batch()
    return batches * args.batch * args.seq / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", type=Path, default=ROOT / "runs/demo/tokenizer/tokenizer.model")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("--cold-gib", type=float, default=2.0, help="size of the synthetic shards for the cold read")
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

        data = Path(tmp) / "data"
        shard_mb = sum(f.stat().st_size for f in data.rglob("*") if f.is_file()) / 2**20
        once = max(1, manifest.stats["tokens"]["train"] // (args.batch * args.seq))  # one pass over the data
        dropped = drop_page_cache(data)
        cold = loader_rate(data, args, once)
        warm = loader_rate(data, args, once)
        many = loader_rate(data, args, args.batches, warm_up=True)
        print(f"loader, one process, batches of {args.batch} x {args.seq} with position ids and cu_seqlens, "
              f"{shard_mb:.1f} MB of shards:")
        print(f"  cold page cache ({dropped} files evicted with posix_fadvise DONTNEED), first pass of {once} "
              f"batches: {cold / 1e6:.1f}M tokens/s")
        print(f"  warm page cache, the same pass again: {warm / 1e6:.1f}M tokens/s ({warm / cold:.2f}x cold)")
        print(f"  warm, {args.batches} batches after a warm-up batch: {many / 1e6:.1f}M tokens/s")
        big = synthetic_shards(Path(tmp) / "synthetic", args.cold_gib)
        dropped = drop_page_cache(big)
        cold = loader_rate(big, args, args.batches)
        warm = loader_rate(big, args, args.batches)
        print(f"  {args.cold_gib:g} GiB of synthetic shards (random windows across all of it), {args.batches} batches: "
              f"cold page cache ({dropped} files evicted) {cold / 1e6:.1f}M tokens/s, the same batches warm "
              f"{warm / 1e6:.1f}M tokens/s ({warm / cold:.2f}x cold)")
    stage_times(cfg, args.tokenizer)


if __name__ == "__main__":
    main()
