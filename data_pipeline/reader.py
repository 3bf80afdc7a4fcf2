"""Read the documents of a data source: files, folders of files, or ``hf:`` datasets."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from kfm.data_pipeline.config import DataSource
from kfm.tokenizer.compressed import split_suffix
from kfm.tokenizer.readers import FILE_SUFFIXES, CorpusError, OnBadRecord, is_corpus_file, iter_texts

DataError = CorpusError
log = logging.getLogger(__name__)


def source_specs(source: DataSource) -> list[str]:
    """What to read, in a stable order: every supported file under a folder (sorted), or the path itself."""
    path = Path(source.path).expanduser()
    if not source.path.startswith("hf:") and path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.is_file() and is_corpus_file(p))
        if not files:
            raise DataError(f"data.sources[{source.name}]: folder {path} has no {'/'.join(FILE_SUFFIXES)} files")
        return files
    return [source.path]


def iter_documents(source: DataSource, on_bad: OnBadRecord | None = None) -> Iterator[str | None]:
    """Every record of a source in a fixed order: a JSON line, a text line, a table or dataset row.

    Blank documents are yielded too (the caller counts them); with ``on_bad`` a bad record is
    reported to it and yielded as ``None``, without it its error is raised.
    """
    for spec in source_specs(source):
        yield from iter_texts(spec, source.text_field, f"data.sources[{source.name}]", split=source.split,
                              on_bad=on_bad)


def count_records(source: DataSource) -> int | None:
    """How many records ``iter_documents`` will yield, read cheaply (non-blank lines, table metadata),
    or None where that needs the whole dataset (``hf:`` names). For progress bars."""
    if source.path.startswith("hf:"):
        return None
    total = 0
    for spec in source_specs(source):
        path = Path(spec).expanduser()
        fmt, compression = split_suffix(path)
        if not path.is_file() or compression or fmt in (".warc", ".wet", ".arrow"):
            return None  # counting would read the whole file
        if fmt == ".parquet":
            import pyarrow.parquet as pq

            total += pq.ParquetFile(path).metadata.num_rows
        else:
            with path.open("rb") as f:
                total += sum(1 for line in f if line.strip())
    return total


class BadRecordLog:
    """``on_bad`` for ``iter_documents`` that logs the first few bad records of a source and counts all."""

    def __init__(self, source: str, show: int = 10) -> None:
        self.source, self.show, self.count = source, show, 0

    def __call__(self, err: CorpusError) -> None:
        self.count += 1
        if self.count <= self.show:
            log.warning("skipped a bad record (data.on_bad_record=skip): %s", err)
        elif self.count == self.show + 1:
            log.warning("data.sources[%s]: more bad records; only their count is reported", self.source)
