"""PII scrubbing: e-mail addresses, Korean phone and resident registration numbers, payment
card numbers and IP addresses become typed placeholders such as ``[EMAIL]``."""

from __future__ import annotations

import bisect
import ipaddress
import re
from collections import Counter

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# Resident registration number: YYMMDD-GNNNNNN (G = 1-8, foreigners included).
_RRN = re.compile(r"(?<!\d)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\s?-\s?[1-8]\d{6}(?!\d)")
_CARD = re.compile(r"(?<!\d)(?:\d{4}[- ]){3}\d{4}(?!\d)|(?<![\d-])\d{16}(?![\d-])")
# Mobile 010/011/016-019, Seoul 02, regional 031-064, internet/VoIP 070, and 1588-style numbers.
_PHONE = re.compile(
    r"(?<![\d-])(?:01[016-9]|02|0[3-6][1-5]|070)[-. )]\s?\d{3,4}[-. ]\d{4}(?![\d-])"
    r"|\+82[- ]?(?:1[016-9]|2|[3-6][1-5]|70)[-. ]\d{3,4}[-. ]\d{4}(?![\d-])"
    r"|(?<![\d-])01[016-9]\d{7,8}(?!\d)"
    r"|(?<![\d-])1[5-9]\d{2}-\d{4}(?![\d-])"
)
_IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.])")
_IPV6_CANDIDATE = re.compile(r"(?<![0-9A-Fa-f:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![0-9A-Fa-f:])")


def _luhn_ok(number: str) -> bool:
    digits = [int(c) for c in number if c.isdigit()]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _is_ipv6(text: str) -> bool:
    """A valid IPv6 address that does not look like code (``a::b``): 3+ groups or a 4-digit group."""
    groups = [g for g in text.split(":") if g]
    if len(groups) < 3 and not any(len(g) == 4 for g in groups):
        return False
    try:
        return isinstance(ipaddress.ip_address(text), ipaddress.IPv6Address)
    except ValueError:
        return False


# Numeric PII (RRN, card, phone, IPv4) lies inside a run of digits and separators at least 7 long
# ("1.1.1.1"); the patterns run only inside such runs. Their look-arounds see the text outside the run,
# which is never a digit or separator, so they decide as on the whole text.
_NUMERIC_RUN = re.compile(r"[+\d][\d\-.()+ \t]*")
_MIN_NUMERIC_RUN = 7
_NUMERIC = ((_RRN, "RRN", None), (_CARD, "CARD", _luhn_ok), (_PHONE, "PHONE", None), (_IPV4, "IP", None))


def find_pii(text: str) -> list[tuple[int, int, str]]:
    """(start, end, kind) of each piece of PII, sorted and not overlapping; where two patterns match
    the same characters the first kind in e-mail, RRN, card, phone, IP order wins."""
    found: list[tuple[int, int, str]] = []  # sorted by start; disjoint, so also by end

    def claim(matches, kind: str, check=None) -> None:
        for m in matches:
            lo, hi = m.span()
            i = bisect.bisect_left(found, (lo,))
            if (i and found[i - 1][1] > lo) or (i < len(found) and found[i][0] < hi):
                continue
            if check is None or check(m.group(0)):
                found.insert(i, (lo, hi, kind))

    if "@" in text:
        claim(_EMAIL.finditer(text), "EMAIL")
    runs = [m.span() for m in _NUMERIC_RUN.finditer(text) if m.end() - m.start() >= _MIN_NUMERIC_RUN]
    for pattern, kind, check in _NUMERIC:
        for lo, hi in runs:
            claim(pattern.finditer(text, lo, hi), kind, check)
    if "::" in text or text.count(":") >= 2:
        claim(_IPV6_CANDIDATE.finditer(text), "IP", _is_ipv6)
    return found


def scrub(text: str, counts: Counter) -> str:
    """Replace PII with typed placeholders; adds what was replaced to ``counts`` (``pii_<type>``)."""
    found = find_pii(text)
    if not found:
        return text
    out, pos = [], 0
    for lo, hi, kind in found:
        out += [text[pos:lo], f"[{kind}]"]
        counts[f"pii_{kind.lower()}"] += 1
        pos = hi
    out.append(text[pos:])
    return "".join(out)


def scrub_reference(text: str) -> str:
    """The plain reference for ``scrub`` (tests and benchmarks): each pattern substituted over the
    whole text in turn. The same result except where PII is glued to PII (see tests/test_pii.py)."""

    def sub(pattern: re.Pattern, kind: str, s: str, check=None) -> str:
        return pattern.sub(lambda m: m.group(0) if check and not check(m.group(0)) else f"[{kind}]", s)

    text = sub(_EMAIL, "EMAIL", text)
    text = sub(_RRN, "RRN", text)
    text = sub(_CARD, "CARD", text, _luhn_ok)
    text = sub(_PHONE, "PHONE", text)
    text = sub(_IPV4, "IP", text)
    return sub(_IPV6_CANDIDATE, "IP", text, _is_ipv6)
