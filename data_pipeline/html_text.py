"""Extract paragraphs from HTML help pages with the standard library's HTML parser."""

from __future__ import annotations

from html.parser import HTMLParser

from kfm.data_pipeline.text import collapse_spaces

BLOCK_TAGS = frozenset(
    "p h1 h2 h3 h4 h5 h6 li dt dd td th caption blockquote div br tr title figcaption".split()
)
SKIP_TAGS = frozenset("script style head header footer nav aside noscript button label select".split())


class _ParagraphParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self._buf: list[str] = []
        self._skip_depth = 0

    def _flush(self) -> None:
        text = collapse_spaces("".join(self._buf))
        self._buf.clear()
        if text:
            self.paragraphs.append(text)

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in SKIP_TAGS:
            self._skip_depth += 1
        elif tag in BLOCK_TAGS:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if tag in SKIP_TAGS:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif tag in BLOCK_TAGS:
            self._flush()

    def handle_data(self, data: str) -> None:
        if not self._skip_depth:
            self._buf.append(data.replace("\n", " "))

    def close(self) -> None:
        super().close()
        self._flush()


def html_paragraphs(html: str) -> list[str]:
    """Visible text of an HTML document, one string per block element, whitespace collapsed.

    Text inside scripts, styles, navigation and page chrome is dropped.
    """
    parser = _ParagraphParser()
    parser.feed(html)
    parser.close()
    return parser.paragraphs
