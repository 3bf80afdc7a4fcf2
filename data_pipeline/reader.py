"""Read documents from local files, with errors that name the file, line and fix."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from data_pipeline.config import DataSource
from tokenizer.sampling import CorpusError, iter_file_texts

SUFFIXES = (".jsonl", ".txt")
DataError = CorpusError


def source_files(source: DataSource) -> list[Path]:
    """The files of a source: the file itself, or every jsonl/txt file under a folder, sorted."""
    path = Path(source.path).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES)
        if not files:
            raise DataError(f"data source {source.name!r}: folder {path} has no {'/'.join(SUFFIXES)} files")
        return files
    if path.is_file():
        if path.suffix not in SUFFIXES:
            raise DataError(f"data source {source.name!r}: {path} is not one of {SUFFIXES}")
        return [path]
    raise DataError(
        f"data source {source.name!r}: corpus path {path} does not exist. For the built-in sample run "
        "`python -m data_pipeline.sample_corpus`; for your own data set data.sources[*].path."
    )


def iter_documents(source: DataSource) -> Iterator[str]:
    """Every non-blank document of a source (a JSON line, or a line of a text file), in a stable order."""
    hint = f"data.sources[{source.name}].text_field"
    for path in source_files(source):
        for text in iter_file_texts(path, source.text_field, hint):
            if text.strip():
                yield text
