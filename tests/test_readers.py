"""Text sources: local files of every kind, folders and Hugging Face datasets (local, offline)."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kfm.data_pipeline.config import DataSource
from kfm.data_pipeline.reader import iter_documents as data_documents
from kfm.tokenizer.config import TextSource
from kfm.tokenizer.readers import CorpusError, iter_texts
from kfm.tokenizer.sampling import iter_documents as tokenizer_documents

DOCS = ["대한민국은 민주공화국이다.", "모든 국민은 법 앞에 평등하다.", "Seoul is the capital."]


@pytest.fixture()
def files(tmp_path):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"body": d}, ensure_ascii=False) + "\n" for d in DOCS))
    (tmp_path / "b.txt").write_text("\n".join(DOCS) + "\n")
    pq.write_table(pa.table({"body": DOCS, "id": [1, 2, 3]}), tmp_path / "c.parquet")
    ds_dir = tmp_path / "my_dataset" / "data"
    ds_dir.mkdir(parents=True)
    pq.write_table(pa.table({"body": DOCS}), ds_dir / "train-00000-of-00001.parquet")
    return tmp_path


@pytest.mark.parametrize("name", ["a.jsonl", "c.parquet"])
def test_files_with_a_text_field(files, name):
    assert list(iter_texts(str(files / name), "body", "x")) == DOCS


def test_txt_lines(files):
    assert list(iter_texts(str(files / "b.txt"), "ignored", "x")) == DOCS


def test_hf_dataset_folder_streams_offline(files):
    assert list(iter_texts(f"hf:{files / 'my_dataset'}", "body", "x", split="train")) == DOCS


def test_missing_column_and_unknown_dataset(files):
    with pytest.raises(CorpusError, match=r"c.parquet row 0: no string column 'text' \(columns: \['body', 'id'\]\)"):
        list(iter_texts(str(files / "c.parquet"), "text", "data.sources[x]"))
    with pytest.raises(CorpusError, match="cannot open dataset hf:no-such/dataset-kfm"):
        list(iter_texts("hf:no-such/dataset-kfm", "text", "x"))
    (files / "d.csv").write_text("text\nhello\n")
    with pytest.raises(CorpusError, match="is not one of"):
        list(iter_texts(str(files / "d.csv"), "text", "x"))


def test_both_stages_read_the_same_sources(files):
    tok = list(tokenizer_documents(TextSource(path=str(files / "c.parquet"), text_field="body")))
    data = list(data_documents(DataSource(name="c", path=str(files / "c.parquet"), text_field="body")))
    assert tok == data == DOCS
    # A folder: every supported file, sorted (a.jsonl, b.txt, c.parquet, my_dataset/...).
    folder = list(data_documents(DataSource(name="all", path=str(files), text_field="body")))
    assert folder == DOCS * 4


@pytest.mark.parametrize("line, column", [(b'{"body": oops}\n', 10), (b'{"body": "a"\n', 13),
                                          (b'{"body": "a"}}\r\n', 14)])
def test_a_malformed_jsonl_line_is_named_with_its_column(tmp_path, line, column):
    """Failed before: the message had no column (the newline was decoded with the line)."""
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"body": "fine"}\n' + line)
    with pytest.raises(CorpusError, match=rf"bad.jsonl:2: not valid JSON \(.* at column {column}\)"):
        list(iter_texts(str(path), "body", "x"))
