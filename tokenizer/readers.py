"""Read texts from local files or Hugging Face datasets, with errors that name the place and the fix.

A source is a path or a dataset name:

- ``*.jsonl``: one JSON document per line, text in ``text_field`` (and its URL in ``url_field``, if any);
- ``*.txt``: one document per non-empty line;
- ``*.parquet``: a table with a ``text_field`` column (read with pyarrow, by row group); ``*.arrow``: the
  same, read with ``datasets``;
- ``*.warc`` / ``*.wet``: the text records of a WARC file, e.g. Common Crawl's WET files (``tokenizer.warc``);
- any of ``jsonl``/``txt``/``warc``/``wet`` compressed as ``.gz`` or ``.zst`` (``tokenizer.compressed``);
- ``hf:<name>`` or ``hf:<name>:<config>``: a Hugging Face dataset, streamed (a hub name, or a
  local dataset folder); ``split`` picks the split.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

from kfm.tokenizer.compressed import compressed_offset, open_binary, split_suffix, stream_errors
from kfm.tokenizer.warc import WarcError, is_text, iter_warc

FILE_SUFFIXES = (".jsonl", ".txt", ".parquet", ".arrow", ".warc", ".wet")
"""Formats, each optionally followed by ``.gz`` or ``.zst`` where ``COMPRESSIBLE``."""
COMPRESSIBLE = (".jsonl", ".txt", ".warc", ".wet")
Record = tuple["str | None", "str | None"]
"""(text, url): text None for a bad record skipped by ``on_bad``; url None where the source has none."""


class CorpusError(ValueError):
    """Bad text input: the message names the file, line or field, and the fix."""


OnBadRecord = Callable[[CorpusError], None]
"""Called with the error of a bad record (a line that is not UTF-8 or not JSON, a missing text
field, a damaged compressed stream or WARC record); the reader then yields ``None`` in the record's
place and goes on (after a damaged stream, with the next file). Without one the error is raised."""


def _bad(err: CorpusError, on_bad: OnBadRecord | None) -> None:
    if on_bad is None:
        raise err
    on_bad(err)


def is_corpus_file(path: Path) -> bool:
    fmt, compression = split_suffix(path)
    return fmt in FILE_SUFFIXES and (compression is None or fmt in COMPRESSIBLE)


def _damaged_stream(path: Path, compression: str, where: str, f, err: BaseException) -> CorpusError:
    return CorpusError(f"{path}: the {compression} stream is corrupt or truncated {where} (compressed byte offset "
                       f"{compressed_offset(f)}): {err}; re-download or recompress the file, or set "
                       "data.on_bad_record=skip to keep what comes before the damage")


def _iter_lines(path: Path, fmt: str, compression: str | None, text_field: str, url_field: str, field_hint: str,
                on_bad: OnBadRecord | None) -> Iterator[Record]:
    errors = stream_errors()
    with open_binary(path, compression) as f:
        lines, lineno = iter(f), 0
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                return
            except errors as err:
                _bad(_damaged_stream(path, compression, f"after line {lineno}", f, err), on_bad)
                yield None, None
                return
            lineno += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                _bad(CorpusError(
                    f"{path}:{lineno}: not valid UTF-8 (byte offset {err.start} in the line); re-encode the file "
                    "as UTF-8, e.g. `iconv -f cp949 -t utf-8` for Korean legacy encodings"), on_bad)
                yield None, None
                continue
            if not line.strip():
                continue
            if fmt != ".jsonl":
                yield line.rstrip("\n"), None
                continue
            try:
                doc = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as err:
                at = "" if err.msg.endswith(" at") else " at"  # "Unterminated string starting at"
                where = f"{err.msg}{at} column {err.colno}"
                _bad(CorpusError(f"{path}:{lineno}: not valid JSON ({where}); fix or remove the line"), on_bad)
                yield None, None
                continue
            text = doc.get(text_field) if isinstance(doc, dict) else None
            if not isinstance(text, str):
                _bad(CorpusError(f"{path}:{lineno}: no string field {text_field!r}; set {field_hint}.text_field "
                                 "to the field that holds the text"), on_bad)
            url = doc.get(url_field) if isinstance(doc, dict) else None
            yield (text if isinstance(text, str) else None), (url if isinstance(url, str) else None)


def _iter_warc_file(path: Path, compression: str | None, on_bad: OnBadRecord | None) -> Iterator[Record]:
    with open_binary(path, compression) as f:
        records = iter_warc(f)
        while True:
            try:
                rec = next(records)
            except StopIteration:
                return
            except WarcError as err:
                _bad(CorpusError(f"{path}: damaged WARC record at byte {err.offset} of the "
                                 f"{'decompressed ' if compression else ''}file: {err}"), on_bad)
                yield None, None
                return
            except stream_errors() as err:
                _bad(_damaged_stream(path, compression, "inside a WARC record", f, err), on_bad)
                yield None, None
                return
            if not is_text(rec):
                continue
            if not rec.block.strip():
                _bad(CorpusError(f"{path}: the WARC {rec.type} record at byte {rec.offset} ({rec.url}) has no body"),
                     on_bad)
                yield None, rec.url
                continue
            try:
                yield rec.block.decode("utf-8"), rec.url
            except UnicodeDecodeError as err:
                _bad(CorpusError(f"{path}: the WARC record at byte {rec.offset} ({rec.url}) is not valid UTF-8 "
                                 f"(byte {err.start} of its block)"), on_bad)
                yield None, rec.url


def _iter_parquet(path: Path, text_field: str, url_field: str, field_hint: str,
                  on_bad: OnBadRecord | None) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        _bad(CorpusError(f"{path}: not a readable parquet file ({err}; the file is {path.stat().st_size} bytes: "
                         "a truncated copy?); re-download or rewrite it"), on_bad)
        yield None, None
        return
    names = pf.schema_arrow.names
    columns = [c for c in (text_field, url_field) if c in names] or names[:1]
    row = 0
    for group in range(pf.num_row_groups):
        try:
            table = pf.read_row_group(group, columns=columns)
        except (pa.ArrowException, OSError) as err:
            _bad(CorpusError(f"{path}: row group {group} (rows from {row}) cannot be read: {err}; "
                             "re-download or rewrite the file"), on_bad)
            yield None, None
            return
        texts = table.column(text_field).to_pylist() if text_field in names else [None] * table.num_rows
        urls = table.column(url_field).to_pylist() if url_field in names else [None] * table.num_rows
        for text, url in zip(texts, urls):
            if not isinstance(text, str):
                _bad(CorpusError(f"{path} row {row}: no string column {text_field!r} (columns: {sorted(names)}); "
                                 f"set {field_hint}.text_field"), on_bad)
                text = None
            yield text, (url if isinstance(url, str) else None)
            row += 1


def iter_file_records(path: Path, text_field: str, field_hint: str, on_bad: OnBadRecord | None = None,
                      url_field: str = "url") -> Iterator[Record]:
    """(text, url) of every record of one local file (see the module docstring for the formats)."""
    fmt, compression = split_suffix(path)
    if fmt == ".parquet":
        yield from _iter_parquet(path, text_field, url_field, field_hint, on_bad)
    elif fmt == ".arrow":
        yield from _iter_dataset("arrow", {"data_files": str(path), "split": "train"}, str(path), text_field,
                                 field_hint, on_bad, url_field)
    elif fmt in (".warc", ".wet"):
        yield from _iter_warc_file(path, compression, on_bad)
    else:
        yield from _iter_lines(path, fmt, compression, text_field, url_field, field_hint, on_bad)


def _iter_dataset(name: str, kwargs: dict, where: str, text_field: str, field_hint: str,
                  on_bad: OnBadRecord | None = None, url_field: str = "url") -> Iterator[Record]:
    import datasets

    try:
        ds = datasets.load_dataset(name, streaming=True, **kwargs)
    except Exception as err:  # noqa: BLE001 - datasets raises many kinds; all mean "cannot open"
        raise CorpusError(f"cannot open dataset {where}: {err}. Check the name/path, the split, and that the "
                          "hub is reachable (HF_DATASETS_OFFLINE=1 allows local data only)") from err
    for i, row in enumerate(ds):
        text = row.get(text_field)
        if not isinstance(text, str):
            _bad(CorpusError(f"{where} row {i}: no string column {text_field!r} (columns: {sorted(row)}); "
                             f"set {field_hint}.text_field"), on_bad)
            text = None
        url = row.get(url_field)
        yield text, (url if isinstance(url, str) else None)


def iter_texts(spec: str, text_field: str, field_hint: str, split: str = "train",
               on_bad: OnBadRecord | None = None) -> Iterator[str | None]:
    """Texts of a file or of a ``hf:`` dataset; ``None`` for a bad record skipped by ``on_bad``."""
    for text, _ in iter_records(spec, text_field, field_hint, split, on_bad):
        yield text


def iter_records(spec: str, text_field: str, field_hint: str, split: str = "train",
                 on_bad: OnBadRecord | None = None, url_field: str = "url") -> Iterator[Record]:
    """(text, url) of every record of a file or of a ``hf:`` dataset (see ``Record``)."""
    if spec.startswith("hf:"):
        name, _, config = spec[3:].partition(":")
        kwargs = {"split": split, **({"name": config} if config else {})}
        yield from _iter_dataset(name, kwargs, spec, text_field, field_hint, on_bad, url_field)
        return
    path = Path(spec).expanduser()
    if not path.is_file():
        raise CorpusError(
            f"{field_hint}: {spec} does not exist. Build the sample corpus with "
            "`python -m kfm.data_pipeline.sample_corpus`, or point the path at your own files (or hf:<dataset>)."
        )
    if not is_corpus_file(path):
        raise CorpusError(f"{field_hint}: {path} is not one of {'/'.join(FILE_SUFFIXES)} (jsonl, txt, warc and wet "
                          "also as .gz or .zst; or use hf:<dataset>)")
    yield from iter_file_records(path, text_field, field_hint, on_bad, url_field)
