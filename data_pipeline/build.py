"""Clean, deduplicate and tokenize the corpus into sharded token files with a manifest.

    python -m data_pipeline.build [run_dir=runs/demo] [data.seq_len=256] [data.clean.pii=false] ...

Reads ``data.sources``; in ``data.num_workers`` processes cleans each document (NFC, control
characters, markup, boilerplate lines, PII, quality filters: ``data_pipeline.clean``) and
tokenizes it with the model at ``tokenizer_model``; drops exact duplicates across all sources;
writes ``<run_dir>/data/{train,val}/*.bin`` plus ``manifest.json`` with what each filter removed.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing as mp
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path

import hydra
import numpy as np
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf
from tqdm import tqdm

from data_pipeline.clean import clean_document
from data_pipeline.config import DataConfig
from data_pipeline.near_dedup import NearDuplicateIndex, signature
from data_pipeline.reader import DataError, iter_documents
from data_pipeline.shards import Manifest, ShardWriter, file_sha256, token_dtype
from data_pipeline.text import normalize
from tokenizer.fast_encode import batch_encoder
from tokenizer.hf import load_sentencepiece
from tokenizer.sampling import is_heldout

log = logging.getLogger(__name__)
BATCH_DOCS = 64


@dataclass
class DataBuildJob:
    """``python -m data_pipeline.build``."""

    run_dir: str = "runs/demo"
    """Shards go to ``<run_dir>/data``."""
    tokenizer_model: str = "${run_dir}/tokenizer/tokenizer.model"
    """SentencePiece model used to tokenize."""
    data: DataConfig = field(default_factory=DataConfig)


def data_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "data"


_WORKER: dict = {}


def _init_worker(model_file: str, cfg: DataConfig) -> None:
    sp = load_sentencepiece(model_file)
    _WORKER.update(encoder=batch_encoder(model_file), bos=sp.bos_id(), eos=sp.eos_id(), cfg=cfg)


def dedup_key(text: str) -> bytes:
    """Exact-duplicate key: the text case-folded with whitespace collapsed, hashed."""
    return hashlib.blake2b(" ".join(text.casefold().split()).encode(), digest_size=16).digest()


def _process_batch(job: tuple[str, list[str]]) -> tuple[list[tuple], Counter]:
    """Clean, filter and tokenize one batch of one source's documents.

    Returns (split, exact-dedup key, MinHash values or None, ``[bos] + ids + [eos]``) for each kept
    document, and the counts of what cleaning did. The split is decided on the raw (NFC) text, by the same rule as the
    tokenizer's held-out split.
    """
    lang, texts = job
    w, counts = _WORKER, Counter()
    cfg: DataConfig = w["cfg"]
    kept = []
    for raw in texts:
        split = "val" if is_heldout(raw, cfg.val_fraction) else "train"
        text = clean_document(raw, lang, cfg.clean, counts) if cfg.clean.enabled else normalize(raw)
        if text is not None:
            kept.append((split, text))
    bos, eos = np.array([w["bos"]], dtype=np.int32), np.array([w["eos"]], dtype=np.int32)
    ids = w["encoder"].encode_batch([t for _, t in kept])
    near = cfg.clean.enabled and cfg.clean.dedup_near
    return [
        (split, dedup_key(t), signature(t, cfg.clean.near_num_perm, cfg.clean.near_shingle_chars) if near else None,
         np.concatenate([bos, x, eos]))
        for (split, t), x in zip(kept, ids)
    ], counts


def _batches(docs: Iterator[str], n: int) -> Iterator[list[str]]:
    while batch := list(islice(docs, n)):
        yield batch


def build_shards(cfg: DataConfig, tokenizer_model: str | Path, out_dir: str | Path) -> Manifest:
    """Tokenize every source of ``cfg`` into ``out_dir``; returns the manifest written there."""
    if not cfg.sources:
        raise DataError("data.sources is empty: name at least one corpus file or folder")
    sp = load_sentencepiece(tokenizer_model)
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    dtype = token_dtype(sp.get_piece_size())
    manifest = Manifest(vocab_size=sp.get_piece_size(), dtype=dtype.name,
                        tokenizer_sha256=file_sha256(Path(tokenizer_model)), bos_id=sp.bos_id(), eos_id=sp.eos_id())
    t0 = time.perf_counter()
    ctx = mp.get_context("spawn")
    counts: dict[str, Counter] = {}
    seen: set[bytes] = set()
    near_index = NearDuplicateIndex(cfg.clean.near_threshold, cfg.clean.near_num_perm)
    with ctx.Pool(cfg.num_workers, initializer=_init_worker, initargs=(str(tokenizer_model), cfg)) as pool:
        for source in cfg.sources:
            writers = {s: ShardWriter(out, s, source.name, dtype, cfg.shard_tokens) for s in ("train", "val")}
            c = counts[source.name] = Counter()
            bar = tqdm(desc=f"clean+tokenize {source.name}", unit="doc", disable=None)

            def jobs(src=source, c=c):
                for batch in _batches(iter_documents(src, c), BATCH_DOCS):
                    c["docs_in"] += len(batch)
                    yield src.lang, batch

            for kept, batch_counts in pool.imap(_process_batch, jobs()):
                c.update(batch_counts)
                for split, key, minhash, toks in kept:
                    if cfg.clean.dedup_exact and key in seen:
                        c["removed_exact_duplicate"] += 1
                        continue
                    seen.add(key)
                    if near_index.seen(key, minhash):
                        c["removed_near_duplicate"] += 1
                        continue
                    writers[split].write(toks)
                    c["docs_kept"] += 1
                bar.update(len(kept))
            bar.close()
            for w in writers.values():
                manifest.shards.extend(w.close())
            log.info("%s: %s", source.name, dict(sorted(c.items())))
    totals = {s: sum(x.num_tokens for x in manifest.split_shards(s)) for s in ("train", "val")}
    docs = {s: sum(x.num_docs for x in manifest.split_shards(s)) for s in ("train", "val")}
    if totals["train"] == 0:
        raise DataError("the corpus is empty: no document in data.sources has any text")
    if totals["val"] == 0:
        raise DataError(
            f"no document landed in the validation split ({docs['train']} documents): "
            "raise data.val_fraction or add more data"
        )
    seconds = time.perf_counter() - t0
    manifest.stats = {"tokens": totals, "docs": docs, "seconds": round(seconds, 2),
                      "tokens_per_second": round((totals["train"] + totals["val"]) / max(seconds, 1e-9)),
                      "cleaning": {name: dict(sorted(c.items())) for name, c in counts.items()}}
    manifest.config = asdict(cfg)
    manifest.save(out)
    log.info("wrote %s: %s", out, manifest.stats)
    return manifest


ConfigStore.instance().store(name="data_build_job_schema", node=DataBuildJob)


@hydra.main(version_base="1.3", config_path="../configs", config_name="data_build")
def main(cfg) -> None:
    job: DataBuildJob = OmegaConf.to_object(cfg)
    build_shards(job.data, job.tokenizer_model, data_dir(job.run_dir))


if __name__ == "__main__":
    main()
