"""Tokenizer training configuration."""

from __future__ import annotations

from dataclasses import dataclass, field

SPECIAL_TOKENS = {"unk": "<unk>", "bos": "<s>", "eos": "</s>", "pad": "<pad>"}
"""Fixed special pieces and their ids: unk=0, bos=1, eos=2, pad=3."""

CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
"""ChatML turn delimiters: ``<|im_start|>role\ncontent<|im_end|>\n``."""

FIM_TOKENS = ("<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>")
"""Fill-in-the-middle markers for code (prefix-suffix-middle order)."""

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""Jinja chat template written into ``tokenizer_config.json``."""


def reserved_tokens(n: int) -> list[str]:
    return [f"<|reserved_{i}|>" for i in range(n)]


def control_tokens(num_reserved: int) -> list[str]:
    """Special pieces after unk/bos/eos/pad, in id order (ids 4, 5, ...): never produced from text."""
    return [*CHAT_TOKENS, *FIM_TOKENS, *reserved_tokens(num_reserved)]


@dataclass
class TextSource:
    """One input of the tokenizer's training mixture."""

    path: str = "???"
    """A ``.jsonl``/``.txt``/``.parquet``/``.arrow`` file, or ``hf:<dataset>[:<config>]`` (see tokenizer.readers)."""
    weight: float = 1.0
    """Relative share of the sampled training sentences."""
    text_field: str = "text"
    """Field/column that holds the text."""
    split: str = "train"
    """Split of a ``hf:`` dataset."""

    def __post_init__(self) -> None:
        if self.weight <= 0:
            raise ValueError(f"tokenizer source {self.path}: weight must be > 0, got {self.weight}")


@dataclass
class TokenizerConfig:
    """How the SentencePiece model is trained."""

    sources: list[TextSource] = field(default_factory=list)
    """Training mixture; sentences are sampled from each in proportion to its weight."""
    vocab_size: int = 65536
    """Vocabulary size, special and byte pieces included; must be a multiple of 128."""
    shrink_vocab_to_fit: bool = False
    """If the corpus cannot support ``vocab_size``, train the largest multiple of 128 it can."""
    model_type: str = "bpe"
    """SentencePiece algorithm: ``bpe`` (default, chosen by bench/tokenizer_trainers.py) or ``unigram``."""
    character_coverage: float = 0.9995
    """Share of characters covered by single pieces; the rest fall back to bytes."""
    sample_sentences: int = 300_000
    """Sentences sampled across all sources for training (reservoir sampling, streaming)."""
    heldout_fraction: float = 0.03
    """Share of documents never trained on (same hash rule as the data pipeline's validation split)."""
    max_sentence_chars: int = 4096
    """Longer lines are cut into pieces of this length before training."""
    num_reserved_tokens: int = 64
    """``<|reserved_i|>`` pieces kept free for later special tokens, so adding one needs no resize."""
    superword_fraction: float = 0.1
    """Share of the vocabulary learned as superword pieces (SuperBPE's second stage, ``tokenizer.superword``):
    0.1 won out of domain in bench/tokenizer_loso.py (SuperBPE's best transition point is also 90%); rounded to whole
    128s (both stages keep multiples of 128); 0 turns it off."""
    superword_max_parts: int = 8
    """At most this many first-stage pieces joined into one superword piece."""
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
        if not 0.0 <= self.heldout_fraction < 0.5:
            raise ValueError(f"tokenizer.heldout_fraction must be in [0, 0.5), got {self.heldout_fraction}")
        if self.num_reserved_tokens < 0:
            raise ValueError(f"tokenizer.num_reserved_tokens must be >= 0, got {self.num_reserved_tokens}")
        if not 0.0 <= self.superword_fraction < 0.5:
            raise ValueError(f"tokenizer.superword_fraction must be in [0, 0.5), got {self.superword_fraction}")
        if self.superword_fraction and self.model_type != "bpe":
            raise ValueError("tokenizer.superword_fraction needs tokenizer.model_type=bpe (set it to 0 for unigram)")
        if self.superword_max_parts < 2:
            raise ValueError(f"tokenizer.superword_max_parts must be >= 2, got {self.superword_max_parts}")
        if self.sample_sentences <= 0 or self.max_sentence_chars <= 0:
            raise ValueError("tokenizer.sample_sentences and tokenizer.max_sentence_chars must be positive")
