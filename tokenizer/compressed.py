"""Compressed text files: ``.gz`` (gzip, also many concatenated members) and ``.zst`` (Zstandard), read as one
stream, with errors that say where the damage is.

A corrupt or truncated stream cannot be read past the damage (gzip and zstd have no resynchronisation
point a reader could trust), so a damaged file ends there: the error names the file, the record reached
and the compressed byte offset.
"""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path
from typing import BinaryIO

COMPRESSIONS = {".gz": "gzip", ".zst": "zstd"}


def split_suffix(path: Path) -> tuple[str, str | None]:
    """(format suffix, compression or None): ``a.jsonl.gz`` -> (``.jsonl``, ``gzip``), ``x.warc.wet.gz`` ->
    (``.wet``, ``gzip``), ``b.txt`` -> (``.txt``, None)."""
    suffixes = path.suffixes
    compression = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    if compression:
        suffixes = suffixes[:-1]
    return (suffixes[-1] if suffixes else ""), compression


class CompressedReader(io.RawIOBase):
    """A binary stream over a compressed file that knows its position in the compressed bytes."""

    def __init__(self, path: Path, compression: str) -> None:
        self.raw = path.open("rb")
        if compression == "gzip":
            self.stream = gzip.GzipFile(fileobj=self.raw, mode="rb")
        else:
            import zstandard

            self.stream = zstandard.ZstdDecompressor().stream_reader(self.raw, read_across_frames=True)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        # read1: at most one decompression step, so that the lines before a damaged spot are delivered
        # before its error is raised (read(n) would decompress ahead and lose them)
        data = self.stream.read1(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def compressed_offset(self) -> int:
        return self.raw.tell()

    def close(self) -> None:
        self.stream.close()
        self.raw.close()
        super().close()


def stream_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a damaged gzip or zstd stream raises while it is read."""
    errors: tuple = (EOFError, zlib.error, gzip.BadGzipFile)
    try:
        import zstandard

        errors += (zstandard.ZstdError,)
    except ImportError:
        pass
    return errors


def open_binary(path: Path, compression: str | None) -> BinaryIO:
    """The file's (decompressed) bytes, buffered."""
    if compression is None:
        return path.open("rb")
    return io.BufferedReader(CompressedReader(path, compression), buffer_size=1 << 20)


def compressed_offset(f: BinaryIO) -> int | None:
    raw = getattr(f, "raw", None)
    return raw.compressed_offset() if isinstance(raw, CompressedReader) else None
