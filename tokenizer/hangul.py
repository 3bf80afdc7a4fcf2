"""The Hangul syllables a Korean tokenizer must always carry."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def ksx1001_syllables() -> str:
    """The 2,350 precomposed Hangul syllables of KS X 1001 (the EUC-KR repertoire).

    Python's ``euc_kr`` codec writes these as two bytes with a lead byte in 0xB0..0xC8
    (rows 16-40); the other 8,822 modern syllables need an 8-byte jamo sequence.
    """
    out = []
    for code in range(0xAC00, 0xD7A4):
        raw = chr(code).encode("euc_kr")
        if len(raw) == 2 and 0xB0 <= raw[0] <= 0xC8:
            out.append(chr(code))
    return "".join(out)
