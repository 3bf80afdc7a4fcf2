"""PII scrubbing: e-mail addresses, Korean phone and resident registration numbers, payment
card numbers and IP addresses become typed placeholders such as ``[EMAIL]``."""

from __future__ import annotations

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


def scrub(text: str, counts: Counter) -> str:
    """Replace PII with typed placeholders; adds what was replaced to ``counts`` (``pii_<type>``)."""

    def sub(pattern: re.Pattern, kind: str, s: str, check=None) -> str:
        def repl(m: re.Match) -> str:
            if check is not None and not check(m.group(0)):
                return m.group(0)
            counts[f"pii_{kind.lower()}"] += 1
            return f"[{kind}]"
        return pattern.sub(repl, s)

    if "@" in text:
        text = sub(_EMAIL, "EMAIL", text)
    text = sub(_RRN, "RRN", text)
    text = sub(_CARD, "CARD", text, _luhn_ok)
    text = sub(_PHONE, "PHONE", text)
    if "." in text:
        text = sub(_IPV4, "IP", text)
    if "::" in text or text.count(":") >= 2:
        text = sub(_IPV6_CANDIDATE, "IP", text, _is_ipv6)
    return text
