"""Clean, deduplicate and tokenize the corpus into sharded token files with a manifest.

    python -m kfm.data_pipeline.build [run_dir=runs/demo] [data.val_fraction=0.03] [data.clean.pii=false] ...

Reads ``data.sources``; in ``data.num_workers`` processes cleans each document (NFC, control
characters, markup, boilerplate lines, PII, quality filters: ``data_pipeline.clean``) and
tokenizes it with the model at ``tokenizer_model``; drops exact and near duplicates across all
sources; writes ``<run_dir>/data/{train,val}/*.{bin,idx}`` plus ``manifest.json`` with what each
filter removed. An interrupted build resumes from its journal (``data_pipeline.journal``); a
finished one with the same inputs is not redone.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path

import hydra
import numpy as np
from omegaconf import OmegaConf
from tqdm import tqdm

from kfm.data_pipeline.config import DataConfig
from kfm.data_pipeline.dedup import Deduplicator, dedup_key
from kfm.data_pipeline.documents import COUNTED_RECORDS, Document, DocumentProcessor
from kfm.data_pipeline.journal import JOURNAL, STATE_DIR, Journal, fingerprint
from kfm.data_pipeline.reader import BadRecordLog, DataError, count_records, iter_documents
from kfm.data_pipeline.shards import MANIFEST, TOKEN_BYTES, Manifest, ShardInfo, ShardWriter, file_sha256, token_dtype
from kfm.schemas import register_schemas
from kfm.tokenizer.hf import load_sentencepiece
from kfm.tokenizer.pieces import piece_byte_lengths

__all__ = ["DataBuildJob", "build_shards", "data_dir", "dedup_key"]
log = logging.getLogger(__name__)
BATCH_DOCS = 64


@dataclass
class DataBuildJob:
    """``python -m kfm.data_pipeline.build``."""

    run_dir: str = "runs/demo"
    """Shards go to ``<run_dir>/data``."""
    tokenizer_model: str = "${run_dir}/tokenizer/tokenizer.model"
    """SentencePiece model used to tokenize."""
    resume: bool = True
    """Resume an interrupted build, and keep a finished one whose inputs are unchanged; false: rebuild."""
    data: DataConfig = field(default_factory=DataConfig)


def data_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "data"


_WORKER: dict = {}


def _init_worker(model_file: str, cfg: DataConfig) -> None:
    _WORKER["processor"] = DocumentProcessor(cfg, model_file)


def _process_batch(job: tuple[str, list[str | None]]) -> tuple[list[Document], Counter]:
    """Clean, filter and tokenize one batch of one source's records (``documents.DocumentProcessor``)."""
    lang, texts = job
    counts = Counter()
    return _WORKER["processor"].process(texts, lang, counts), counts


def _batches(records: Iterator, n: int) -> Iterator[list]:
    while batch := list(islice(records, n)):
        yield batch


def _up_to_date(out: Path, fp: str) -> Manifest | None:
    if not (out / MANIFEST).is_file():
        return None
    try:
        manifest = Manifest.load(out)
    except (ValueError, TypeError, KeyError):
        return None
    return manifest if manifest.fingerprint == fp else None


def check_tokenizer_heldout(tokenizer_model: Path, val_fraction: float) -> None:
    """The validation documents must be ones the tokenizer was not trained on either: both splits use
    ``is_heldout``, so that holds when the tokenizer held out at least ``val_fraction``."""
    stats = tokenizer_model.parent / "train_stats.json"
    if not stats.is_file():
        return  # a tokenizer kfm did not train: nothing to check against
    heldout = json.loads(stats.read_text()).get("config", {}).get("heldout_fraction")
    if heldout is not None and heldout < val_fraction:
        raise DataError(f"data.val_fraction={val_fraction} is more than the tokenizer held out "
                        f"(tokenizer.heldout_fraction={heldout} in {stats}): validation documents would include text "
                        "the tokenizer was trained on. Set data.val_fraction <= tokenizer.heldout_fraction (they are "
                        "equal by default) or retrain the tokenizer")


def build_shards(cfg: DataConfig, tokenizer_model: str | Path, out_dir: str | Path, resume: bool = True,
                 on_commit: Callable[[Journal], None] | None = None) -> Manifest:
    """Tokenize every source of ``cfg`` into ``out_dir``; returns the manifest written there.

    With ``resume``, a finished build with the same fingerprint is returned as is and an interrupted
    one goes on from its journal. ``on_commit`` is called after each journal commit.
    """
    if not cfg.sources:
        raise DataError("data.sources is empty: name at least one corpus file or folder")
    sp = load_sentencepiece(tokenizer_model)
    check_tokenizer_heldout(Path(tokenizer_model), cfg.val_fraction)
    out = Path(out_dir)
    tokenizer_sha256 = file_sha256(Path(tokenizer_model))
    fp = fingerprint(cfg, tokenizer_sha256)
    if resume and (done := _up_to_date(out, fp)):
        log.info("%s is up to date (same config, tokenizer and inputs); pass resume=false to rebuild", out)
        if not (out / TOKEN_BYTES).is_file():
            np.save(out / TOKEN_BYTES, piece_byte_lengths(sp))
        return done
    journal = Journal.load(out) if resume and out.is_dir() else None
    if journal is not None and journal.fingerprint != fp:
        log.info("%s: the config, tokenizer or inputs changed since the interrupted build: starting over", out)
        journal = None
    if journal is None:
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        journal = Journal(fp)
    else:
        log.info("resuming the build in %s at source %d (%s), record %d", out, journal.source_index,
                 cfg.sources[min(journal.source_index, len(cfg.sources) - 1)].name, journal.records_done)
    np.save(out / TOKEN_BYTES, piece_byte_lengths(sp))  # for bits-per-byte in validation
    dtype = token_dtype(sp.get_piece_size())
    manifest = Manifest(vocab_size=sp.get_piece_size(), dtype=dtype.name, tokenizer_sha256=tokenizer_sha256,
                        bos_id=sp.bos_id(), eos_id=sp.eos_id(), fingerprint=fp)
    t0, spent = time.perf_counter(), journal.seconds
    counts = {name: Counter(c) for name, c in journal.counts.items()}
    cc = cfg.clean
    dedup = Deduplicator(out / STATE_DIR, cc.enabled and cc.dedup_exact, cc.enabled and cc.dedup_near,
                         cc.near_threshold, cc.near_num_perm, journal.dedup_counts)

    def commit(source_index: int, records_done: int, writers: dict[str, ShardWriter]) -> None:
        journal.source_index, journal.records_done = source_index, records_done
        journal.writers = {s: w.state() for s, w in writers.items()}
        journal.dedup_counts = dedup.sync()
        journal.counts = {name: dict(c) for name, c in counts.items()}
        journal.seconds = spent + time.perf_counter() - t0
        journal.save(out)
        if on_commit is not None:
            on_commit(journal)

    try:
        ctx = mp.get_context("spawn")
        with ctx.Pool(cfg.num_workers, initializer=_init_worker, initargs=(str(tokenizer_model), cfg)) as pool:
            for si in range(journal.source_index, len(cfg.sources)):
                source = cfg.sources[si]
                resuming = si == journal.source_index
                skip = journal.records_done if resuming else 0
                writers = {s: ShardWriter(out, s, source.name, dtype, cfg.shard_tokens,
                                          journal.writers.get(s) if resuming else None) for s in ("train", "val")}
                c = counts.setdefault(source.name, Counter())
                on_bad = BadRecordLog(source.name) if cfg.on_bad_record == "skip" else None
                records = islice(iter_documents(source, on_bad), skip, None)
                bar = tqdm(desc=f"build {source.name}", unit="doc", total=count_records(source), initial=skip,
                           disable=None, smoothing=0.05)
                done, finished, last_commit = skip, 0, time.monotonic()
                jobs = ((source.lang, batch) for batch in _batches(records, BATCH_DOCS))
                for kept, batch_counts in pool.imap(_process_batch, jobs):
                    c.update(batch_counts)
                    for doc in kept:
                        if (dup := dedup.check(doc.key, doc.signature)) is not None:
                            c[f"removed_{dup}_duplicate"] += 1
                            continue
                        writers[doc.split].write(doc.tokens)
                        c["docs_kept"] += 1
                    n = sum(batch_counts[k] for k in COUNTED_RECORDS)
                    done += n
                    bar.update(n)
                    bar.set_postfix_str(f"{c['bytes_in'] / 1e6 / max(bar.format_dict['elapsed'], 1e-9):.2f} MB/s",
                                        refresh=False)
                    now_finished = sum(len(w.shards) for w in writers.values())
                    if now_finished > finished or time.monotonic() - last_commit > cfg.commit_seconds:
                        commit(si, done, writers)
                        finished, last_commit = now_finished, time.monotonic()
                        log.info("%s: %d records done, %d shards finished", source.name, done, finished)
                bar.close()
                for w in writers.values():
                    journal.done_shards.extend(asdict(x) for x in w.close())
                commit(si + 1, 0, {})
                log.info("%s: %s", source.name, dict(sorted(c.items())))
        dedup.close()
        manifest.shards = [ShardInfo(**s) for s in journal.done_shards]
        totals = {s: sum(x.num_tokens for x in manifest.split_shards(s)) for s in ("train", "val")}
        docs = {s: sum(x.num_docs for x in manifest.split_shards(s)) for s in ("train", "val")}
        if totals["train"] == 0:
            raise DataError("the corpus is empty: no document in data.sources has any text")
        if totals["val"] == 0:
            raise DataError(
                f"no document landed in the validation split ({docs['train']} documents): "
                "raise data.val_fraction or add more data"
            )
        seconds = journal.seconds
        manifest.stats = {"tokens": totals, "docs": docs, "seconds": round(seconds, 2),
                          "tokens_per_second": round((totals["train"] + totals["val"]) / max(seconds, 1e-9)),
                          "cleaning": {name: dict(sorted(c.items())) for name, c in counts.items()}}
        manifest.config = asdict(cfg)
        manifest.save(out)
        (out / JOURNAL).unlink()
        shutil.rmtree(out / STATE_DIR)
    except DataError:
        # Bad input stops the build; the fix changes the inputs' fingerprint, so nothing here could be resumed:
        # leave no half-written folder that looks like shards.
        shutil.rmtree(out, ignore_errors=True)
        log.error("the build stopped on bad input; %s was removed", out)
        raise
    log.info("wrote %s: %s", out, manifest.stats)
    return manifest


register_schemas("data_build_job_schema")


@hydra.main(version_base="1.3", config_path="../configs", config_name="data_build")
def main(cfg) -> None:
    job: DataBuildJob = OmegaConf.to_object(cfg)
    try:
        build_shards(job.data, job.tokenizer_model, data_dir(job.run_dir), resume=job.resume)
    except DataError as err:  # bad input: the one message that names the fix, no traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
