"""Read texts from local files or Hugging Face datasets, with errors that name the place and the fix.

A source is a path or a dataset name:

- ``*.jsonl``: one JSON document per line, text in ``text_field``;
- ``*.txt``: one document per non-empty line;
- ``*.parquet`` / ``*.arrow``: a table with a ``text_field`` column (read with ``datasets``);
- ``hf:<name>`` or ``hf:<name>:<config>``: a Hugging Face dataset, streamed (a hub name, or a
  local dataset folder); ``split`` picks the split.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

FILE_SUFFIXES = (".jsonl", ".txt", ".parquet", ".arrow")


class CorpusError(ValueError):
    """Bad text input: the message names the file, line or field, and the fix."""


OnBadRecord = Callable[[CorpusError], None]
"""Called with the error of a bad record (a line that is not UTF-8 or not JSON, a missing text
field); the reader then yields ``None`` in the record's place and goes on. Without one the
error is raised."""


def _bad(err: CorpusError, on_bad: OnBadRecord | None) -> None:
    if on_bad is None:
        raise err
    on_bad(err)


def iter_file_texts(path: Path, text_field: str, field_hint: str,
                    on_bad: OnBadRecord | None = None) -> Iterator[str | None]:
    """Texts of one local file (see the module docstring for the formats)."""
    if path.suffix in (".parquet", ".arrow"):
        yield from _iter_dataset(path.suffix[1:], {"data_files": str(path), "split": "train"}, str(path),
                                 text_field, field_hint, on_bad)
        return
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                _bad(CorpusError(
                    f"{path}:{lineno}: not valid UTF-8 (byte offset {err.start} in the line); re-encode the file "
                    "as UTF-8, e.g. `iconv -f cp949 -t utf-8` for Korean legacy encodings"), on_bad)
                yield None
                continue
            if not line.strip():
                continue
            if path.suffix != ".jsonl":
                yield line.rstrip("\n")
                continue
            try:
                doc = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as err:
                at = "" if err.msg.endswith(" at") else " at"  # "Unterminated string starting at"
                where = f"{err.msg}{at} column {err.colno}"
                _bad(CorpusError(f"{path}:{lineno}: not valid JSON ({where}); fix or remove the line"), on_bad)
                yield None
                continue
            text = doc.get(text_field) if isinstance(doc, dict) else None
            if not isinstance(text, str):
                _bad(CorpusError(f"{path}:{lineno}: no string field {text_field!r}; set {field_hint}.text_field "
                                 "to the field that holds the text"), on_bad)
            yield text if isinstance(text, str) else None


def _iter_dataset(name: str, kwargs: dict, where: str, text_field: str, field_hint: str,
                  on_bad: OnBadRecord | None = None) -> Iterator[str | None]:
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
        yield text


def iter_texts(spec: str, text_field: str, field_hint: str, split: str = "train",
               on_bad: OnBadRecord | None = None) -> Iterator[str | None]:
    """Texts of a file or of a ``hf:`` dataset; ``None`` for a bad record skipped by ``on_bad``."""
    if spec.startswith("hf:"):
        name, _, config = spec[3:].partition(":")
        kwargs = {"split": split, **({"name": config} if config else {})}
        yield from _iter_dataset(name, kwargs, spec, text_field, field_hint, on_bad)
        return
    path = Path(spec).expanduser()
    if not path.is_file():
        raise CorpusError(
            f"{field_hint}: {spec} does not exist. Build the sample corpus with "
            "`python -m kfm.data_pipeline.sample_corpus`, or point the path at your own files (or hf:<dataset>)."
        )
    if path.suffix not in FILE_SUFFIXES:
        raise CorpusError(f"{field_hint}: {path} is not one of {'/'.join(FILE_SUFFIXES)} (or use hf:<dataset>)")
    yield from iter_file_texts(path, text_field, field_hint, on_bad)
