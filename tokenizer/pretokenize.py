"""Where kfm's BPE pieces may begin and end: the pre-token patterns of the exact encoders.

SentencePiece's BPE encoder merges across a whole text; the Hugging Face twin
(``tokenizer.hf``) and the tiktoken batch encoder (``tokenizer.fast_encode``) first split text
into pre-tokens and merge inside each. They give SentencePiece's ids as long as no piece spans a
pre-token boundary, which these patterns guarantee for kfm's two kinds of model.
"""

from __future__ import annotations

import re

WORD_PATTERN = r" +[^ ]*|[^ ]+"
"""A run of spaces and the non-spaces after it: SentencePiece's first-stage pieces never cross it."""

JUNCTION = "A-Za-z\uac00-\ud7a3"
"""Characters on both sides of the space inside a superword piece: ASCII letters and Hangul syllables.
Spelled out rather than a Unicode letter class, on which Python, Oniguruma (``tokenizers``) and
fancy-regex (tiktoken) may disagree across Unicode versions."""

SUPERWORD_PATTERN = rf"(?: +[^ ]*|[^ ]+)(?:(?<=[{JUNCTION}]) (?=[{JUNCTION}])[^ ]*)*"
"""``WORD_PATTERN`` with words glued across a single space between two junction characters
(``tokenizer.superword`` only learns pieces inside such pre-tokens)."""


_UNSAFE = re.compile(rf"[^ ] (?![{JUNCTION}])|[^ {JUNCTION}] ")


def superword_safe(piece: str) -> bool:
    """Whether every space after a non-space in ``piece`` lies between two junction characters of the piece,
    so that the piece never spans a boundary of ``SUPERWORD_PATTERN`` (a piece ending in "을 " would, before
    a pre-token such as " 😀")."""
    return not _UNSAFE.search(piece)


def has_superwords(proto) -> bool:
    """Whether any normal piece of a SentencePiece model holds a space after a non-space."""
    return any(re.search(r"[^ ] ", p.piece) for p in proto.pieces if p.type == p.NORMAL)


def pattern_for(proto) -> str:
    return SUPERWORD_PATTERN if has_superwords(proto) else WORD_PATTERN


def superword_pretokens(text: str) -> list[str]:
    return re.findall(SUPERWORD_PATTERN, text)
