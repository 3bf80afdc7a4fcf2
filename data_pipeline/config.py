"""Data configuration: where the text is and how it becomes training sequences."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DataSource:
    """One text source of the corpus."""

    name: str = "???"
    """Short name, used in shard file names and stats (letters, digits, ``-``, ``_``)."""
    path: str = "???"
    """A ``.jsonl``/``.txt``/``.parquet``/``.arrow`` file, a folder of them, or ``hf:<dataset>[:<config>]``."""
    text_field: str = "text"
    """Field/column that holds the document text."""
    split: str = "train"
    """Split of a ``hf:`` dataset."""
    lang: str = "ko"
    """Language tag, recorded in the manifest."""

    def __post_init__(self) -> None:
        if not self.name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"data.sources name {self.name!r} must be letters, digits, '-' or '_'")


@dataclass
class DataConfig:
    """Corpus sources and the shape of the training data."""

    sources: list[DataSource] = field(default_factory=list)
    """Text sources tokenized into shards."""
    seq_len: int = 256
    """Tokens per training sequence (the model sees ``seq_len`` inputs and as many targets)."""
    val_fraction: float = 0.03
    """Share of documents held out for validation (chosen by a hash of the text: stable across runs)."""
    shard_tokens: int = 50_000_000
    """Tokens per shard file before a new one is started."""
    num_workers: int = 2
    """Processes that tokenize in parallel."""

    def __post_init__(self) -> None:
        if self.seq_len <= 0 or self.shard_tokens <= 0 or self.num_workers <= 0:
            raise ValueError("data.seq_len, data.shard_tokens and data.num_workers must be positive")
        if not 0.0 < self.val_fraction < 0.5:
            raise ValueError(f"data.val_fraction must be in (0, 0.5), got {self.val_fraction}")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"data.sources names must be unique, got {names}")
