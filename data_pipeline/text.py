"""Text helpers shared by the corpus builders and filters: script shares, normalisation."""

from __future__ import annotations

import re
import unicodedata

_WS = re.compile(r"[ \t\u00a0\u3000]+")


def is_hangul(ch: str) -> bool:
    """True for Hangul syllables and (compatibility) jamo."""
    o = ord(ch)
    return 0xAC00 <= o <= 0xD7A3 or 0x1100 <= o <= 0x11FF or 0x3130 <= o <= 0x318F or 0xA960 <= o <= 0xA97F


def hangul_share(text: str) -> float:
    """Fraction of alphabetic characters that are Hangul (0.0 for text with no letters)."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 0.0
    return sum(map(is_hangul, letters)) / len(letters)


def ascii_letter_share(text: str) -> float:
    """Fraction of alphabetic characters that are ASCII letters."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 0.0
    return sum(c.isascii() for c in letters) / len(letters)


def count_hangul_syllables(text: str) -> int:
    return sum(0xAC00 <= ord(c) <= 0xD7A3 for c in text)


def normalize(text: str) -> str:
    """Unicode NFC. The tokenizer sees exactly this text: it applies no normalisation itself."""
    return unicodedata.normalize("NFC", text)


def collapse_spaces(text: str) -> str:
    """Collapse runs of horizontal whitespace (markup artefacts) into one space and strip."""
    return _WS.sub(" ", text).strip()
