"""Data configuration, in two parts: the shard build (``DataConfig``, ``data.*`` of ``kfm.data_pipeline.build``:
where the text is, how it is cleaned and sharded) and the loader (``LoaderConfig``, ``loader.*`` of a training
job: how the shards become training sequences, the mixture weights included). Changing the loader never
invalidates the shards."""

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
    url_field: str = "url"
    """Field/column with the document's URL, where there is one (WARC/WET: ``WARC-Target-URI``): the staged
    build counts kept documents and tokens per domain in the manifest."""
    split: str = "train"
    """Split of a ``hf:`` dataset."""
    lang: str = "ko"
    """Language tag: ``ko`` gets the Hangul-share filter, ``code`` skips prose-only filters."""
    def __post_init__(self) -> None:
        if not self.name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"data.sources name {self.name!r} must be letters, digits, '-' or '_'")


@dataclass
class CleanConfig:
    """Cleaning, PII scrubbing and quality filters applied to every document before tokenizing."""

    enabled: bool = True
    """Apply cleaning and filters at all (off: only NFC and tokenization)."""
    pii: bool = True
    """Replace e-mail, phone, resident-registration, card numbers and IPs with typed placeholders."""
    boilerplate_lines: bool = True
    """Drop short lines that are site chrome (copyright, log-in, share, cookie notices)."""
    boilerplate_max_line_chars: int = 80
    """Only lines up to this length can be boilerplate."""
    min_chars: int = 20
    """Documents shorter than this (after cleaning) are removed."""
    min_hangul_share: float = 0.3
    """Korean (``lang: ko``) documents need at least this share of Hangul among letters."""
    max_duplicate_line_fraction: float = 0.3
    """Prose is removed when more than this share of its characters sits in repeated lines (Gopher)."""
    max_top_bigram_fraction: float = 0.2
    """Prose is removed when its most frequent word 2-gram covers more than this share (Gopher)."""
    dedup_exact: bool = True
    """Drop documents whose normalised text (NFC, case-folded, whitespace collapsed) was seen before."""
    dedup_near: bool = True
    """Drop documents whose MinHash-estimated Jaccard similarity to a kept one reaches ``near_threshold``."""
    near_threshold: float = 0.5
    """Jaccard similarity of character shingles from which two documents are near-duplicates (0.5; measured in
    bench/results/near_dedup.md: pairs at true J 0.6 found 95% of the time, at 0.3 wrongly flagged 1.3%)."""
    near_num_perm: int = 128
    """MinHash permutations (more: slower, more accurate)."""
    near_shingle_chars: int = 5
    """Characters per shingle."""

    def __post_init__(self) -> None:
        for key in ("min_hangul_share", "max_duplicate_line_fraction", "max_top_bigram_fraction", "near_threshold"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"data.clean.{key} must be in [0, 1], got {getattr(self, key)}")
        if self.min_chars < 0 or self.boilerplate_max_line_chars < 0:
            raise ValueError("data.clean.min_chars and data.clean.boilerplate_max_line_chars must be >= 0")
        if self.near_num_perm < 16 or self.near_shingle_chars < 1:
            raise ValueError("data.clean.near_num_perm must be >= 16 and data.clean.near_shingle_chars >= 1")


@dataclass
class DataConfig:
    """The shard build: corpus sources, cleaning, the validation split and the shard files."""

    sources: list[DataSource] = field(default_factory=list)
    """Text sources tokenized into shards."""
    val_fraction: float = 0.03
    """Share of documents held out for validation (chosen by a hash of the text: stable across runs)."""
    shard_tokens: int = 50_000_000
    """Tokens per shard file before a new one is started."""
    num_workers: int = 2
    """Processes that clean and tokenize in parallel."""
    clean: CleanConfig = field(default_factory=CleanConfig)
    """Cleaning, PII scrubbing, quality filters and exact dedup."""
    on_bad_record: str = "error"
    """A record that is not UTF-8, not JSON or lacks the text field: ``error`` stops the build naming
    the file and line; ``skip`` logs the first few, counts all (``removed_bad_record``) and goes on."""
    commit_seconds: float = 60.0
    """The build journal is committed after every finished shard and at least this often: an
    interrupted build resumes from the last commit."""

    def __post_init__(self) -> None:
        if self.shard_tokens <= 0 or self.num_workers <= 0:
            raise ValueError("data.shard_tokens and data.num_workers must be positive")
        if self.on_bad_record not in ("error", "skip"):
            raise ValueError(f"data.on_bad_record must be 'error' or 'skip', got {self.on_bad_record!r}")
        if not 0.0 < self.val_fraction < 0.5:
            raise ValueError(f"data.val_fraction must be in (0, 0.5), got {self.val_fraction}")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"data.sources names must be unique, got {names}")


@dataclass
class LoaderConfig:
    """How the shards become training sequences (``loader.*``; ``kfm.data_pipeline.loader``)."""

    seq_len: int = 256
    """Tokens per training sequence (the model sees ``seq_len`` inputs and as many targets)."""
    weights: dict[str, float] = field(default_factory=dict)
    """Share of training sequences drawn from each source of the shards, by source name (every source named);
    empty: in proportion to each source's tokens."""
    verify_checksums: bool = True
    """Check every shard's SHA-256 against the manifest at start (reads all shards once)."""

    def __post_init__(self) -> None:
        if self.seq_len <= 0:
            raise ValueError(f"loader.seq_len must be positive, got {self.seq_len}")
        if any(w < 0 for w in self.weights.values()) or (self.weights and not any(self.weights.values())):
            raise ValueError(f"loader.weights must be >= 0 and not all 0, got {dict(self.weights)}")

    def mixture(self) -> dict[str, float] | None:
        """Mixture weights by source name, or None for the natural (token-proportional) mixture."""
        return {name: float(w) for name, w in self.weights.items()} or None
