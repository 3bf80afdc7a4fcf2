"""Text sources: local files of every kind, folders and Hugging Face datasets (local, offline)."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kfm.data_pipeline.config import DataSource
from kfm.data_pipeline.reader import iter_documents as data_documents
from kfm.tokenizer.config import TextSource
from kfm.tokenizer.readers import CorpusError, iter_records, iter_texts
from kfm.tokenizer.sampling import iter_documents as tokenizer_documents
from tests.helpers import warc_record, write_warc

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


def _jsonl(docs) -> bytes:
    return "".join(json.dumps({"text": d, "url": f"https://www.ko{i}.kr/x"}, ensure_ascii=False) + "\n"
                   for i, d in enumerate(docs)).encode()


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst", ".txt.gz"])
def test_compressed_files_read_as_the_plain_ones(tmp_path, suffix):
    import gzip

    import zstandard

    data = _jsonl(DOCS) if suffix.startswith(".jsonl") else ("\n".join(DOCS) + "\n").encode()
    path = tmp_path / f"a{suffix}"
    if suffix.endswith(".gz"):  # two gzip members, as concatenated or parallel-compressed files have
        path.write_bytes(gzip.compress(data[:40]) + gzip.compress(data[40:]))
    else:
        path.write_bytes(zstandard.ZstdCompressor().compress(data))
    assert list(iter_texts(str(path), "text", "x")) == DOCS
    if suffix.startswith(".jsonl"):
        assert [u for _, u in iter_records(str(path), "text", "x")] == [f"https://www.ko{i}.kr/x" for i in range(3)]


def test_wet_and_warc_text_records_with_their_urls(tmp_path):
    records = [warc_record("warcinfo", "", b"software: test", "application/warc-fields"),
               warc_record("conversion", "https://ko.example.kr/1", DOCS[0].encode()),
               warc_record("response", "https://ko.example.kr/2", b"HTTP/1.1 200 OK\r\n\r\n<p>x</p>", "application/http"),
               warc_record("resource", "https://ko.example.kr/3", DOCS[1].encode())]
    for name in ("a.warc.wet.gz", "b.wet", "c.warc"):
        got = list(iter_records(str(write_warc(tmp_path / name, records)), "text", "x"))
        assert got == [(DOCS[0], "https://ko.example.kr/1"), (DOCS[1], "https://ko.example.kr/3")]


def test_a_corrupt_gzip_member_is_named_with_its_offset_or_skipped(tmp_path):
    import gzip

    good = gzip.compress(_jsonl(DOCS[:2]))
    bad = bytearray(gzip.compress(_jsonl(DOCS[2:]) * 50))
    bad[30:40] = b"\xff" * 10  # inside the second member's deflate data
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(good + bytes(bad))
    with pytest.raises(CorpusError, match=r"a.jsonl.gz: the gzip stream is corrupt or truncated after line 2 "
                                          r"\(compressed byte offset \d+\)"):
        list(iter_texts(str(path), "text", "x"))
    seen = []
    assert list(iter_texts(str(path), "text", "x", on_bad=seen.append)) == DOCS[:2] + [None]
    assert len(seen) == 1
    path.write_bytes(good + gzip.compress(_jsonl(DOCS))[:-12])  # truncated: the end of the last member is missing
    with pytest.raises(CorpusError, match="corrupt or truncated after line 4"):
        list(iter_texts(str(path), "text", "x"))


def test_a_truncated_parquet_file_is_named_or_skipped(tmp_path):
    pq.write_table(pa.table({"text": DOCS}), tmp_path / "a.parquet")
    whole = (tmp_path / "a.parquet").read_bytes()
    (tmp_path / "a.parquet").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CorpusError, match=rf"a.parquet: not a readable parquet file .*the file is {len(whole) // 2} "
                                          "bytes: a truncated copy"):
        list(iter_texts(str(tmp_path / "a.parquet"), "text", "x"))
    seen = []
    assert list(iter_texts(str(tmp_path / "a.parquet"), "text", "x", on_bad=seen.append)) == [None]
    assert len(seen) == 1


def test_a_warc_record_without_a_body_is_named_with_its_offset_or_skipped(tmp_path):
    first = warc_record("conversion", "https://a.kr/1", DOCS[0].encode())
    empty = warc_record("conversion", "https://a.kr/2", b"")
    records = [first, empty, warc_record("conversion", "https://a.kr/3", DOCS[2].encode())]
    path = write_warc(tmp_path / "a.warc.wet.gz", records)
    with pytest.raises(CorpusError, match=rf"a.warc.wet.gz: the WARC conversion record at byte {len(first)} "
                                          r"\(https://a.kr/2\) has no body"):
        list(iter_texts(str(path), "text", "x"))
    seen = []
    assert list(iter_texts(str(path), "text", "x", on_bad=seen.append)) == [DOCS[0], None, DOCS[2]]
    assert len(seen) == 1
    cut = write_warc(tmp_path / "b.wet", [first, warc_record("conversion", "https://a.kr/2", b"abc", length=500)])
    with pytest.raises(CorpusError, match=rf"b.wet: damaged WARC record at byte {len(first)} of the file: the "
                                          "record's block is cut off: Content-Length 500"):
        list(iter_texts(str(cut), "text", "x"))
