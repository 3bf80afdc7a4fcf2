"""Leftover HTML in plain-text sources: remove real tags, keep text that merely contains ``<`` or ``>``.

A regex of the shape ``<word ...>`` deletes text: ``if a<b and c>d`` became ``if ad`` and ``<Ctrl>+<Shift> 키를``
became ``+ 키를``. What counts as markup here is a grammar of actual tags:

- a comment ``<!-- ... -->``; a ``<script>`` or ``<style>`` element with its content;
- a start tag whose name is an HTML element (``ELEMENTS``), written all lower or all upper case (``<p>``, ``<BR>``;
  ``<Ctrl>`` and ``<Code>`` are left alone), with only well-formed attributes: ``name=value`` (quoted or not) or
  one of HTML's boolean attributes (``checked``, ``disabled``, ...), so ``<b and c>`` is text;
- an end tag ``</name>`` of such an element whose start tag the document also has (an orphan ``</a>`` is text,
  as in a spreadsheet formula that builds a link).

A tag the text talks about is text: help pages write "표제는 <h1> 태그와 </h1> 태그로 표시됩니다" or "the tags <h1> at the
beginning". A tag with a tag word near it (``태그``, ``요소``, ``마크업``, ``tag``, ``element``, ``markup``: 40 characters
before or 30 after) is a mention and stays, and so does every other tag of that element in the document (``(<OPTION
VALUE=...>)`` in a page that said "HTML 태그 <OPTION>에 해당").

Entities are decoded only in their complete form (``&amp;``, ``&#44608;``, ``&#xAC00;``, names HTML5 defines):
``html.unescape`` on its own also decodes legacy prefixes (``x&notation`` would become ``x¬ation``).
A whole HTML page is better read by ``data_pipeline.html_text`` (the standard library's parser); this is for
fragments left in text.
"""

from __future__ import annotations

import html
import re
from html.entities import html5

ELEMENTS = frozenset("""
    a abbr address area article aside audio b base bdi bdo big blockquote body br button canvas caption center
    cite code col colgroup data datalist dd del details dfn dialog div dl dt em embed fieldset figcaption figure
    font footer form frame frameset h1 h2 h3 h4 h5 h6 head header hgroup hr html i iframe img input ins kbd label
    legend li link main map mark marquee menu meta meter nav nobr noscript object ol optgroup option output p param
    picture pre progress q rp rt ruby s samp section select small source span strike strong sub summary sup svg
    table tbody td template textarea tfoot th thead time title tr track tt u ul var video wbr
""".split())
BOOLEAN_ATTRIBUTES = ("allowfullscreen async autofocus autoplay checked controls default defer disabled hidden "
                      "ismap loop multiple muted nomodule novalidate nowrap open readonly required reversed "
                      "selected").split()

_ATTR = (r"""\s+(?:[A-Za-z_:][-\w:.]*\s*=\s*(?:"[^"<>]*"|'[^'<>]*'|[^\s"'=<>`]+)"""
         rf"""|(?i:{'|'.join(BOOLEAN_ATTRIBUTES)})(?=[\s/>]))""")
_MARKUP = re.compile(
    r"<!--.*?-->"
    r"|<(?P<block>script|style|SCRIPT|STYLE)\b[^<>]*>.*?</(?P=block)\s*>"
    rf"|<(?P<open>[A-Za-z][A-Za-z0-9]*)(?:{_ATTR})*\s*/?>"
    r"|</(?P<close>[A-Za-z][A-Za-z0-9]*)\s*>",
    re.S,
)
_TAG_WORD = re.compile(r"태그|요소|마크업|(?i:\b(?:tags?|elements?|markup)\b)")
MENTION_BEFORE, MENTION_AFTER = 40, 30
_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")


def _decode(m: re.Match) -> str:
    entity = m.group(0)
    if entity[1] != "#" and entity[1:] not in html5:  # ``&notation;``: not an entity, and no ``&not`` prefix
        return entity
    return html.unescape(entity)


def _is_element(name: str | None) -> bool:
    return name is None or ((name.islower() or name.isupper()) and name.lower() in ELEMENTS)


def _name(m: re.Match) -> str | None:
    name = m.group("open") or m.group("close")
    return name.lower() if name else None


def _mentioned(text: str, found: list[re.Match]) -> set[str]:
    """Element names the text talks about: a tag word within reach of one of their tags."""
    names = set()
    for m in found:
        near = text[max(0, m.start() - MENTION_BEFORE) : m.start()] + " " + text[m.end() : m.end() + MENTION_AFTER]
        if _name(m) and _TAG_WORD.search(near):
            names.add(_name(m))
    return names


def strip_markup(text: str) -> tuple[str, int, int]:
    """``text`` without its HTML tags and comments, entities decoded; (text, tags removed, characters removed
    by the tags)."""
    tags = chars = 0
    if "<" in text:
        found = [m for m in _MARKUP.finditer(text)
                 if m.group("block") is not None or _is_element(m.group("open") or m.group("close"))]
        mentioned = _mentioned(text, found)
        opened = {m.group("open").lower() for m in found if m.group("open")}
        pieces, last = [], 0
        for m in found:
            if _name(m) in mentioned or (m.group("close") and _name(m) not in opened):
                continue
            pieces.append(text[last : m.start()])
            last = m.end()
            tags += 1
            chars += m.end() - m.start()
        text = "".join(pieces) + text[last:]
    if "&" in text:
        text = _ENTITY.sub(_decode, text)
    return text, tags, chars
