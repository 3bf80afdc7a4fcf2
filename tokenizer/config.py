"""Tokenizer training configuration."""

from __future__ import annotations

from dataclasses import dataclass, field

SPECIAL_TOKENS = {"unk": "<unk>", "bos": "<s>", "eos": "</s>", "pad": "<pad>"}
"""Fixed special pieces and their ids: unk=0, bos=1, eos=2, pad=3."""


@dataclass
class TextSource:
    """One input of the tokenizer's training mixture."""

    path: str = "???"
    """A ``.jsonl`` file (documents in ``text_field``), or a ``.txt`` file (one line = one sentence)."""
    weight: float = 1.0
    """Relative share of the sampled training sentences."""
    text_field: str = "text"
    """JSON field that holds the text in ``.jsonl`` files."""

    def __post_init__(self) -> None:
        if self.weight <= 0:
            raise ValueError(f"tokenizer source {self.path}: weight must be > 0, got {self.weight}")


@dataclass
class TokenizerConfig:
    """How the SentencePiece model is trained."""

    sources: list[TextSource] = field(default_factory=list)
    """Training mixture; sentences are sampled from each in proportion to its weight."""
    vocab_size: int = 8192
    """Vocabulary size, special and byte pieces included; must be a multiple of 128."""
    model_type: str = "unigram"
    """SentencePiece algorithm: ``unigram`` or ``bpe``."""
    character_coverage: float = 0.9995
    """Share of characters covered by single pieces; the rest fall back to bytes."""
    sample_sentences: int = 300_000
    """Sentences sampled across all sources for training (reservoir sampling, streaming)."""
    max_sentence_chars: int = 4096
    """Longer lines are cut into pieces of this length before training."""
    ksx1001_hangul: bool = True
    """Guarantee all 2,350 KS X 1001 Hangul syllables as single pieces."""
    seed: int = 0
    """Seed of the sentence sampler."""
    num_threads: int = 2
    """SentencePiece trainer threads."""

    def __post_init__(self) -> None:
        if self.vocab_size % 128 or self.vocab_size < 512:
            raise ValueError(f"tokenizer.vocab_size must be a multiple of 128 and >= 512, got {self.vocab_size}")
        if self.model_type not in ("unigram", "bpe"):
            raise ValueError(f"tokenizer.model_type must be 'unigram' or 'bpe', got {self.model_type!r}")
        if not 0.9 <= self.character_coverage <= 1.0:
            raise ValueError(f"tokenizer.character_coverage must be in [0.9, 1], got {self.character_coverage}")
        if self.sample_sentences <= 0 or self.max_sentence_chars <= 0:
            raise ValueError("tokenizer.sample_sentences and tokenizer.max_sentence_chars must be positive")
