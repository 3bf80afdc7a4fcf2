"""The shard build: resumes after being killed, is not redone when up to date, and handles bad records."""

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from kfm.data_pipeline.build import build_shards
from kfm.data_pipeline.config import CleanConfig, DataConfig, DataSource
from kfm.data_pipeline.journal import JOURNAL, Journal
from kfm.data_pipeline.loader import TokenWindows
from kfm.data_pipeline.reader import DataError
from kfm.data_pipeline.shards import Manifest

ROOT = Path(__file__).resolve().parents[1]

KILLED_BUILD = """
import json, os, signal, sys
from omegaconf import OmegaConf
from kfm.data_pipeline.build import build_shards
from kfm.data_pipeline.config import DataConfig

cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), json.loads(sys.argv[1])))

def on_commit(journal):  # kill at the first commit inside source argv[4] that leaves a shard open
    if journal.source_index == int(sys.argv[4]) and any(w["tokens"] for w in journal.writers.values()):
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup of any kind, as on a node failure

build_shards(cfg, sys.argv[2], sys.argv[3], on_commit=on_commit)
"""


SEQ_LEN = 16


def _config(corpus: dict[str, Path]) -> DataConfig:
    return DataConfig(sources=[DataSource(name=k, path=str(v), lang=k) for k, v in corpus.items()],
                      val_fraction=0.1, num_workers=2, shard_tokens=1500,
                      clean=CleanConfig(near_threshold=0.7))


def _shard_records(manifest: Manifest) -> list[dict]:
    return [asdict(s) for s in manifest.shards]


def test_killed_build_resumes_to_the_same_shards_without_redoing_finished_ones(tiny_corpus, tiny_tokenizer,
                                                                              tmp_path):
    lines = tiny_corpus["ko"].read_text(encoding="utf-8").splitlines(keepends=True)
    (tmp_path / "ko.jsonl").write_text("".join(lines + lines[:40]), encoding="utf-8")  # exact copies at the end
    cfg = _config({**tiny_corpus, "ko": tmp_path / "ko.jsonl"})
    model = tiny_tokenizer / "tokenizer.model"
    straight = build_shards(cfg, model, tmp_path / "straight", resume=False)
    ko = straight.stats["cleaning"]["ko"]  # the kill is early in ko: dedup state matters across it
    assert ko["removed_near_duplicate"] > 0 and ko["removed_exact_duplicate"] > 0

    out = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILLED_BUILD, json.dumps(asdict(cfg)), str(model), str(out), "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    journal = Journal.load(out)
    assert journal is not None and not (out / "manifest.json").exists()
    assert journal.source_index == 0 and 0 < journal.records_done < len(lines)
    open_shards = [w for w in journal.writers.values() if w["tokens"]]
    assert open_shards, "the kill should leave a shard half written"
    # Bytes written after the last commit (lost work the journal does not cover) are cut off on resume.
    for partial in out.rglob("*.partial"):
        with partial.open("ab") as f:
            f.write(b"\x07" * 24)
    finished = [Path(out / s["file"]) for s in journal.done_shards] + \
               [out / s["file"] for w in journal.writers.values() for s in w["shards"]]
    assert finished
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished}

    resumed = build_shards(cfg, model, out)
    assert _shard_records(resumed) == _shard_records(straight)
    assert resumed.stats["cleaning"] == straight.stats["cleaning"]
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished} == before  # not rewritten
    assert not (out / JOURNAL).exists() and not list(out.rglob("*.partial"))
    TokenWindows(out, "train", SEQ_LEN, verify=True)


def test_finished_build_is_kept_and_a_changed_config_rebuilds(tiny_corpus, tiny_tokenizer, tmp_path):
    cfg = _config(tiny_corpus)
    model = tiny_tokenizer / "tokenizer.model"
    first = build_shards(cfg, model, tmp_path / "out")
    stamp = (tmp_path / "out" / "manifest.json").stat().st_mtime_ns
    assert _shard_records(build_shards(cfg, model, tmp_path / "out")) == _shard_records(first)
    assert (tmp_path / "out" / "manifest.json").stat().st_mtime_ns == stamp  # nothing redone
    cfg.clean.near_threshold = 0.9
    rebuilt = build_shards(cfg, model, tmp_path / "out")
    assert rebuilt.fingerprint != first.fingerprint
    assert rebuilt.stats["cleaning"]["ko"]["removed_near_duplicate"] < first.stats["cleaning"]["ko"][
        "removed_near_duplicate"]


BAD_LINES = {
    "not valid JSON": b'{"text": oops}\n',
    "not valid UTF-8": '{"text": "깨진 글자"}\n'.encode("cp949"),
    "no string field 'text'": '{"body": "다른 필드에 있는 글입니다."}\n'.encode(),
}


@pytest.mark.parametrize("problem", BAD_LINES)
def test_a_bad_record_is_an_error_naming_file_and_line(tiny_tokenizer, tmp_path, problem):
    good = '{"text": "대한민국은 민주공화국이다. 모든 국민은 법 앞에 평등하다."}\n'.encode()
    (tmp_path / "ko.jsonl").write_bytes(good * 2 + BAD_LINES[problem] + good)
    cfg = DataConfig(sources=[DataSource(name="ko", path=str(tmp_path / "ko.jsonl"))], num_workers=1)
    with pytest.raises(DataError, match=rf"ko.jsonl:3: {problem}"):
        build_shards(cfg, tiny_tokenizer / "tokenizer.model", tmp_path / "out")


def test_bad_records_are_counted_and_skipped_when_configured(tiny_tokenizer, tmp_path, caplog):
    docs = [f'{{"text": "{i}번째 문서입니다. 대한민국은 민주공화국이고 모든 국민은 법 앞에 평등하다."}}\n'.encode()
            for i in range(40)]
    (tmp_path / "ko.jsonl").write_bytes(b"".join(docs[:10]) + b"".join(BAD_LINES.values()) + b"".join(docs[10:]))
    cfg = DataConfig(sources=[DataSource(name="ko", path=str(tmp_path / "ko.jsonl"))], num_workers=1,
                     val_fraction=0.2, on_bad_record="skip", clean=CleanConfig(dedup_near=False))
    counts = build_shards(cfg, tiny_tokenizer / "tokenizer.model", tmp_path / "out").stats["cleaning"]["ko"]
    assert counts["removed_bad_record"] == 3 and counts["docs_in"] == 40 and counts["docs_kept"] == 40
    assert "ko.jsonl:12: not valid UTF-8" in caplog.text


def test_truncated_offsets_file_is_named(tiny_corpus, tiny_tokenizer, tmp_path):
    cfg = _config(tiny_corpus)
    out = tmp_path / "out"
    manifest = build_shards(cfg, tiny_tokenizer / "tokenizer.model", out)
    victim = manifest.split_shards("train")[0].index_file
    data = (out / victim).read_bytes()
    (out / victim).write_bytes(data[:-8])
    with pytest.raises(ValueError, match=f"{victim}: .*missing or truncated"):
        TokenWindows(out, "train", SEQ_LEN)
    os.remove(out / victim)
    with pytest.raises(ValueError, match=f"{victim}: 0 bytes on disk"):
        TokenWindows(out, "train", SEQ_LEN)
    assert np.dtype(manifest.dtype) == np.uint16


def test_validation_split_larger_than_the_tokenizers_heldout_is_refused(tiny_corpus, tiny_tokenizer, tmp_path):
    cfg = _config(tiny_corpus)
    cfg.val_fraction = 0.45  # the tiny tokenizer held out 0.4
    with pytest.raises(DataError, match=r"data.val_fraction=0.45 is more than the tokenizer held out .*=0.4"):
        build_shards(cfg, tiny_tokenizer / "tokenizer.model", tmp_path / "out")
