"""Cleaning and Korean-aware quality filtering of one document, with a count of every decision.

Order: Unicode NFC and line endings → control characters → leftover markup (not for code) →
boilerplate lines → PII scrubbing → document filters (length, Hangul share for Korean,
Gopher-style repetition for prose). Thresholds live in ``CleanConfig``.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

from kfm.data_pipeline.config import CleanConfig
from kfm.data_pipeline.markup import strip_markup
from kfm.data_pipeline.pii import scrub
from kfm.data_pipeline.text import hangul_share

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufeff]")
_BLANK_RUN = re.compile(r"\n{3,}")
BOILERPLATE = re.compile(
    r"무단\s*(?:전재|복제|배포)|저작권자\s*[©ⓒ(]|all rights reserved|copyright\s*(?:©|\(c\)|ⓒ)"
    r"|개인정보\s*처리\s*방침|이용\s*약관|로그인|회원\s*가입|구독\s*(?:하기|신청)|공유하기|기사\s*제보"
    r"|cookies?\s+(?:policy|settings)|enable\s+javascript",
    re.I,
)


def normalize_text(text: str, lang: str, counts: Counter | None = None) -> str:
    """NFC, ``\\n`` line endings, no control characters (tabs and newlines kept), no leftover HTML tags
    (``data_pipeline.markup``; counted as ``markup_tags_removed`` and ``markup_chars_removed``)."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    if lang != "code":
        text, tags, chars = strip_markup(text)
        if counts is not None and tags:
            counts["markup_tags_removed"] += tags
            counts["markup_chars_removed"] += chars
    return _BLANK_RUN.sub("\n\n", text)


def drop_boilerplate(text: str, max_line_chars: int, counts: Counter) -> str:
    """Remove short lines that are site chrome (copyright, log-in, share, cookie notices)."""
    kept = []
    for line in text.split("\n"):
        if len(line) <= max_line_chars and BOILERPLATE.search(line):
            counts["lines_boilerplate"] += 1
        else:
            kept.append(line)
    return "\n".join(kept)


def duplicate_line_fraction(lines: list[str]) -> float:
    """Share of characters in lines that occur more than once (Gopher's duplicate-line rule)."""
    lines = [ln.strip() for ln in lines if ln.strip()]
    total = sum(map(len, lines))
    if not total:
        return 0.0
    freq = Counter(lines)
    return sum(len(ln) for ln in lines if freq[ln] > 1) / total


def top_bigram_fraction(words: list[str]) -> float:
    """Share of characters covered by the most frequent word 2-gram (Gopher's n-gram rule)."""
    if len(words) < 4:
        return 0.0
    grams = Counter(zip(words, words[1:]))
    (a, b), n = grams.most_common(1)[0]
    if n < 2:
        return 0.0
    return n * (len(a) + len(b)) / max(1, sum(map(len, words)))


def clean_document(text: str, lang: str, cfg: CleanConfig, counts: Counter) -> str | None:
    """The cleaned text, or ``None`` when a filter removes the document (``counts[removed_<filter>]``)."""
    text = normalize_text(text, lang, counts)
    if cfg.boilerplate_lines and lang != "code":
        text = drop_boilerplate(text, cfg.boilerplate_max_line_chars, counts)
    if cfg.pii:
        text = scrub(text, counts)
    text = text.strip("\n")
    reason = None
    if len(text.strip()) < cfg.min_chars:
        reason = "too_short"
    elif lang == "ko" and hangul_share(text) < cfg.min_hangul_share:
        reason = "low_hangul"
    elif lang != "code" and duplicate_line_fraction(text.split("\n")) > cfg.max_duplicate_line_fraction:
        reason = "repeated_lines"
    elif lang != "code" and top_bigram_fraction(text.split()) > cfg.max_top_bigram_fraction:
        reason = "repeated_ngrams"
    if reason:
        counts[f"removed_{reason}"] += 1
        return None
    return text
