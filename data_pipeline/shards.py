"""Token shard files and their manifest.

A shard is a flat binary array of token ids (``uint16`` when the vocabulary fits, else
``uint32``); documents are laid end to end as ``<s> ... </s>``. Next to each ``<name>.bin``,
``<name>.idx`` holds the token offset where each document starts (``uint64``). ``manifest.json``
lists every shard with its token and document counts and the SHA-256 of both files, so a
reader can check it reads what was written.

Files are written as ``*.partial`` and renamed when complete. A writer's ``state()`` (finished
shards, and the length of the open one) lets an interrupted build reopen it where it was.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from kfm.files import write_atomically

MANIFEST = "manifest.json"
TOKEN_BYTES = "token_bytes.npy"
"""Bytes of text behind each token id (``tokenizer.pieces.piece_byte_lengths``), for bits-per-byte."""
FORMAT_VERSION = 2
OFFSET_DTYPE = np.dtype(np.uint64)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32)


@dataclass
class ShardInfo:
    file: str
    """Path relative to the data directory."""
    split: str
    source: str
    num_tokens: int
    num_docs: int
    sha256: str
    index_sha256: str
    """SHA-256 of the document offsets file (``index_file``)."""

    @property
    def index_file(self) -> str:
        return index_path(self.file)


@dataclass
class Manifest:
    vocab_size: int
    dtype: str
    tokenizer_sha256: str
    bos_id: int = 1
    eos_id: int = 2
    shards: list[ShardInfo] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    """The data config the shards were built with."""
    fingerprint: str = ""
    """Hash of everything the shards depend on (config, tokenizer, input files): equal means up to date."""
    format_version: int = FORMAT_VERSION

    def save(self, data_dir: Path) -> None:
        write_atomically(data_dir / MANIFEST, json.dumps(asdict(self), indent=2, ensure_ascii=False))

    @classmethod
    def load(cls, data_dir: str | Path) -> Manifest:
        path = Path(data_dir) / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: build the token shards first with `python -m kfm.data_pipeline.build`")
        raw = json.loads(path.read_text())
        if raw.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: shard format {raw.get('format_version')} != {FORMAT_VERSION}; rebuild the shards")
        raw["shards"] = [ShardInfo(**s) for s in raw["shards"]]
        return cls(**raw)

    def split_shards(self, split: str) -> list[ShardInfo]:
        return [s for s in self.shards if s.split == split]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def index_path(shard_file: str) -> str:
    return shard_file[: -len(".bin")] + ".idx"


def _fsync(f) -> None:
    f.flush()
    os.fsync(f.fileno())


class ShardWriter:
    """Appends documents to ``<split>/<stem>_<n>.bin`` (and their offsets to ``.idx``), rolling over
    at ``shard_tokens``; the stem is the source's name unless given. ``state`` from an earlier writer's
    ``state()`` reopens where it stopped."""

    def __init__(self, data_dir: Path, split: str, source: str, dtype: np.dtype, shard_tokens: int,
                 state: dict | None = None, stem: str | None = None) -> None:
        self.data_dir, self.split, self.source, self.stem = data_dir, split, source, stem or source
        self.dtype, self.shard_tokens = dtype, shard_tokens
        self.shards: list[ShardInfo] = []
        self._f = self._idx = None
        self._tokens = self._docs = 0
        (data_dir / split).mkdir(parents=True, exist_ok=True)
        if state is not None:
            self._restore(state)

    def _rel(self) -> str:
        return f"{self.split}/{self.stem}_{len(self.shards):05d}.bin"

    def _paths(self) -> tuple[Path, Path]:
        rel = self._rel()
        return self.data_dir / (rel + ".partial"), self.data_dir / (index_path(rel) + ".partial")

    def write(self, doc_tokens: np.ndarray) -> None:
        if self._f is None:
            tok, idx = self._paths()
            self._f, self._idx = tok.open("wb"), idx.open("wb")
        self._idx.write(np.array([self._tokens], dtype=OFFSET_DTYPE).tobytes())
        self._f.write(doc_tokens.astype(self.dtype, copy=False).tobytes())
        self._tokens += len(doc_tokens)
        self._docs += 1
        if self._tokens >= self.shard_tokens:
            self._finish()

    def _finish(self) -> None:
        if self._f is None:
            return
        self._f.close()
        self._idx.close()
        rel = self._rel()
        tok, idx = self._paths()
        os.replace(idx, self.data_dir / index_path(rel))
        os.replace(tok, self.data_dir / rel)
        self.shards.append(ShardInfo(rel, self.split, self.source, self._tokens, self._docs,
                                     file_sha256(self.data_dir / rel), file_sha256(self.data_dir / index_path(rel))))
        self._f = self._idx = None
        self._tokens = self._docs = 0

    def close(self) -> list[ShardInfo]:
        self._finish()
        return self.shards

    def state(self) -> dict:
        """Finished shards and the open shard's length, after making its bytes durable."""
        if self._f is not None:
            _fsync(self._f)
            _fsync(self._idx)
        return {"shards": [asdict(s) for s in self.shards], "tokens": self._tokens, "docs": self._docs}

    def _restore(self, state: dict) -> None:
        """Reopen the shard that was open at ``state()``: its partial files (or, had it been finished
        since, its final files) cut back to the recorded length."""
        self.shards = [ShardInfo(**s) for s in state["shards"]]
        self._tokens, self._docs = int(state["tokens"]), int(state["docs"])
        rel = self._rel()
        for partial, final, size in zip(self._paths(), (self.data_dir / rel, self.data_dir / index_path(rel)),
                                        (self._tokens * self.dtype.itemsize, self._docs * OFFSET_DTYPE.itemsize)):
            if not partial.exists() and final.exists():
                os.replace(final, partial)
            if size == 0:
                partial.unlink(missing_ok=True)
                continue
            if not partial.exists() or partial.stat().st_size < size:
                raise ValueError(f"{partial}: shorter than the build journal records ({size} bytes); "
                                 "the build cannot resume: delete the output folder and build again")
            with partial.open("r+b") as f:
                f.truncate(size)
        if self._tokens:
            tok, idx = self._paths()
            self._f, self._idx = tok.open("ab"), idx.open("ab")
