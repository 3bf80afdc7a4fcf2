"""WARC and WET files (Common Crawl's archives; ``.warc``, ``.wet``, optionally ``.gz``): the text records.

A record is a version line (``WARC/1.0``), header lines up to a blank line, ``Content-Length`` bytes of
block, and a blank line. Text comes from ``conversion`` records (WET: the text Common Crawl extracted from
each page) and ``resource`` records of ``text/plain``; ``WARC-Target-URI`` is the document's URL. Raw HTML
``response`` records are not read here: take the WET file Common Crawl publishes next to each WARC file, or
extract text first.

kfm reads the format itself rather than with ``warcio``: warcio 1.8.1 returned a truncated block, and a record
whose gzip member was cut off, as shorter or empty bodies without an error (measured), and a build must say
which record of which file is damaged.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

TEXT_TYPES = ("conversion", "resource")


class WarcError(ValueError):
    """A damaged record: ``offset`` is the byte (in the decompressed stream) where it starts."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


@dataclass
class WarcRecord:
    offset: int
    """Where the record starts in the (decompressed) stream."""
    type: str
    url: str | None
    content_type: str
    block: bytes


def iter_warc(f: BinaryIO) -> Iterator[WarcRecord]:
    """Every record of a WARC stream; ``WarcError`` at a malformed or truncated one."""
    offset = 0
    while True:
        line = f.readline()
        if not line:
            return
        start = offset
        offset += len(line)
        if not line.strip():  # tolerate extra blank lines between records
            continue
        if not line.startswith(b"WARC/"):
            raise WarcError(f"expected a WARC version line, got {line[:40]!r}", start)
        headers = {}
        while True:
            line = f.readline()
            offset += len(line)
            if not line:
                raise WarcError("the file ends inside the record's headers", start)
            if not line.strip():
                break
            name, sep, value = line.decode("utf-8", "replace").partition(":")
            if not sep:
                raise WarcError(f"malformed header line {line[:60]!r}", start)
            headers[name.strip().lower()] = value.strip()
        try:
            length = int(headers["content-length"])
        except (KeyError, ValueError):
            raise WarcError("no valid Content-Length header", start) from None
        block = f.read(length)
        offset += len(block)
        if len(block) < length:
            raise WarcError(f"the record's block is cut off: Content-Length {length}, the file has {len(block)} "
                            "bytes left (a truncated download?)", start)
        yield WarcRecord(start, headers.get("warc-type", ""), headers.get("warc-target-uri"),
                         headers.get("content-type", ""), block)


def is_text(record: WarcRecord) -> bool:
    return record.type == "conversion" or (record.type == "resource" and record.content_type.startswith("text/"))
