"""Token shard files and their manifest.

A shard is a flat binary array of token ids (``uint16`` when the vocabulary fits, else
``uint32``); documents are laid end to end as ``<s> ... </s>``. ``manifest.json`` lists every
shard with its token count and SHA-256, so a reader can check it reads what was written.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


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
    format_version: int = FORMAT_VERSION

    def save(self, data_dir: Path) -> None:
        tmp = data_dir / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, ensure_ascii=False))
        os.replace(tmp, data_dir / MANIFEST)

    @classmethod
    def load(cls, data_dir: str | Path) -> Manifest:
        path = Path(data_dir) / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: build the token shards first with `python -m data_pipeline.build`")
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


class ShardWriter:
    """Appends token arrays to ``<split>/<source>_<n>.bin`` files, rolling over at ``shard_tokens``."""

    def __init__(self, data_dir: Path, split: str, source: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.data_dir, self.split, self.source = data_dir, split, source
        self.dtype, self.shard_tokens = dtype, shard_tokens
        self.shards: list[ShardInfo] = []
        self._f = None
        self._tokens = self._docs = 0
        (data_dir / split).mkdir(parents=True, exist_ok=True)

    def _rel(self) -> str:
        return f"{self.split}/{self.source}_{len(self.shards):05d}.bin"

    def write(self, doc_tokens: np.ndarray) -> None:
        if self._f is None:
            self._f = (self.data_dir / (self._rel() + ".partial")).open("wb")
        self._f.write(doc_tokens.astype(self.dtype, copy=False).tobytes())
        self._tokens += len(doc_tokens)
        self._docs += 1
        if self._tokens >= self.shard_tokens:
            self._finish()

    def _finish(self) -> None:
        if self._f is None:
            return
        self._f.close()
        rel = self._rel()
        partial, final = self.data_dir / (rel + ".partial"), self.data_dir / rel
        os.replace(partial, final)
        self.shards.append(ShardInfo(rel, self.split, self.source, self._tokens, self._docs, file_sha256(final)))
        self._f, self._tokens, self._docs = None, 0, 0

    def close(self) -> list[ShardInfo]:
        self._finish()
        return self.shards
