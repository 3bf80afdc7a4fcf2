"""Read the documents of a data source: files, folders of files, or ``hf:`` datasets."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from data_pipeline.config import DataSource
from tokenizer.readers import FILE_SUFFIXES, CorpusError, iter_texts

DataError = CorpusError


def source_specs(source: DataSource) -> list[str]:
    """What to read, in a stable order: every supported file under a folder (sorted), or the path itself."""
    path = Path(source.path).expanduser()
    if not source.path.startswith("hf:") and path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.suffix in FILE_SUFFIXES)
        if not files:
            raise DataError(f"data.sources[{source.name}]: folder {path} has no {'/'.join(FILE_SUFFIXES)} files")
        return files
    return [source.path]


def iter_documents(source: DataSource, counts: Counter | None = None) -> Iterator[str]:
    """Every non-blank document of a source (a JSON line, a text line, a table row, a dataset row).

    Blank documents are skipped and counted in ``counts["removed_empty"]``.
    """
    for spec in source_specs(source):
        for text in iter_texts(spec, source.text_field, f"data.sources[{source.name}]", split=source.split):
            if text.strip():
                yield text
            elif counts is not None:
                counts["removed_empty"] += 1
