import json

import numpy as np
import pytest
import sentencepiece as spm

from collections import Counter

from data_pipeline.build import build_shards, dedup_key
from data_pipeline.clean import clean_document
from tokenizer.sampling import is_heldout
from data_pipeline.config import CleanConfig, DataConfig, DataSource
from data_pipeline.html_text import html_paragraphs
from data_pipeline.loader import DistributedLoader, TokenWindows, validation_batches
from data_pipeline.reader import DataError
from data_pipeline.shards import Manifest, file_sha256
from data_pipeline.text import hangul_share, normalize

SEQ = 32


@pytest.fixture(scope="module")
def shards(tiny_corpus, tiny_tokenizer, tmp_path_factory):
    cfg = DataConfig(sources=[DataSource(name=k, path=str(v), lang=k) for k, v in tiny_corpus.items()],
                     seq_len=SEQ, val_fraction=0.1, num_workers=2, shard_tokens=5000,
                     clean=CleanConfig(dedup_near=False))  # near-dedup has its own test
    out = tmp_path_factory.mktemp("data")
    build_shards(cfg, tiny_tokenizer / "tokenizer.model", out)
    return out


def test_shards_hold_exactly_the_cleaned_tokenized_documents(shards, tiny_corpus, tiny_tokenizer):
    sp = spm.SentencePieceProcessor(model_file=str(tiny_tokenizer / "tokenizer.model"))
    manifest = Manifest.load(shards)
    assert manifest.dtype == "uint16" and manifest.vocab_size == 768
    seen, clean_cfg = set(), CleanConfig(dedup_near=False)
    for source, path in tiny_corpus.items():
        expected = {"train": [], "val": []}
        for line in path.read_text(encoding="utf-8").split("\n")[:-1]:
            raw = json.loads(line)["text"]
            text = clean_document(raw, source, clean_cfg, Counter())
            if text is None or dedup_key(text) in seen:
                continue
            seen.add(dedup_key(text))
            expected["val" if is_heldout(raw, 0.1) else "train"] += [1, *sp.encode(text), 2]
        for split in ("train", "val"):
            files = [s for s in manifest.split_shards(split) if s.source == source]
            got = np.concatenate([np.fromfile(shards / s.file, dtype=np.uint16) for s in files]) if files else []
            assert list(got) == expected[split], (source, split)
    for s in manifest.shards:
        assert file_sha256(shards / s.file) == s.sha256
    assert len([s for s in manifest.shards if s.source == "ko" and s.split == "train"]) > 1  # rolled over
    assert manifest.stats["docs"]["val"] > 0
    en = manifest.stats["cleaning"]["en"]
    assert en["docs_in"] == 300 and en["removed_exact_duplicate"] > 0
    assert en["docs_kept"] + sum(v for k, v in en.items() if k.startswith("removed_")) == en["docs_in"]


def test_cleaning_counts_every_decision(tiny_tokenizer, tmp_path):
    docs = [
        "대한민국은 민주공화국이다. 대한민국의 주권은 국민에게 있다.",
        "대한민국은  민주공화국이다.  대한민국의 주권은 국민에게 있다.",  # duplicate up to spacing
        "문의는 010-1234-5678 또는 help@example.com 으로 해 주세요. 감사합니다.",
        "짧다",
        "This page is in English only, no Korean here at all, sorry.",
        "<p>모든 국민은 <b>법 앞에</b> 평등하다.</p> 누구든지 차별을 받지 아니한다.\nCopyright © 2024 All rights reserved",
        "반복되는 줄입니다\n반복되는 줄입니다\n반복되는 줄입니다\n다른 줄 하나",
    ]
    (tmp_path / "ko.jsonl").write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs))
    cfg = DataConfig(sources=[DataSource(name="ko", path=str(tmp_path / "ko.jsonl"))], val_fraction=0.4,
                     num_workers=1, seq_len=8)
    manifest = build_shards(cfg, tiny_tokenizer / "tokenizer.model", tmp_path / "out")
    c = manifest.stats["cleaning"]["ko"]
    assert c == {"docs_in": 7, "docs_kept": 3, "removed_exact_duplicate": 1, "removed_too_short": 1,
                 "removed_low_hangul": 1, "removed_repeated_lines": 1, "pii_phone": 1, "pii_email": 1,
                 "lines_boilerplate": 1}
    sp = spm.SentencePieceProcessor(model_file=str(tiny_tokenizer / "tokenizer.model"))
    text = sp.decode([int(t) for s in manifest.shards for t in np.fromfile(tmp_path / "out" / s.file,
                                                                          dtype=np.uint16)])
    assert "[PHONE]" in text and "[EMAIL]" in text and "<b>" not in text and "법 앞에 평등" in text
    assert "All rights reserved" not in text and "010-1234" not in text


def test_windows_cover_the_split_and_span_shards(shards):
    w = TokenWindows(shards, "train", SEQ)
    stream = np.concatenate([np.fromfile(shards / s.file, dtype=np.uint16)
                             for s in w.manifest.split_shards("train")]).astype(np.int64)
    assert len(w) == (len(stream) - 1) // SEQ
    for i in (0, 1, len(w) // 2, len(w) - 1):
        assert np.array_equal(w[i], stream[i * SEQ : (i + 1) * SEQ + 1])


def test_loader_is_deterministic_disjoint_and_covers_an_epoch(shards):
    w = TokenWindows(shards, "train", SEQ)
    world, lb = 2, 3
    loaders = [DistributedLoader(w, lb, r, world, seed=7) for r in range(world)]
    spe = loaders[0].steps_per_epoch
    seen = np.concatenate([ld.indices(s) for s in range(spe) for ld in loaders])
    assert len(seen) == len(set(seen.tolist())) == spe * world * lb  # no window twice in an epoch
    again = DistributedLoader(w, lb, 1, world, seed=7)  # a fresh loader, as after a restart
    for step in (0, 5, spe + 2):
        x, y = loaders[1].batch(step)
        x2, y2 = again.batch(step)
        assert x.equal(x2) and y.equal(y2)
        assert x.shape == (lb, SEQ) and x[:, 1:].equal(y[:, :-1])
    assert not np.array_equal(loaders[0].indices(0), loaders[0].indices(spe))  # new order next epoch
    assert not np.array_equal(DistributedLoader(w, lb, 0, world, seed=8).indices(0), loaders[0].indices(0))


def test_validation_batches_are_fixed_and_sharded(shards):
    w = TokenWindows(shards, "val", SEQ)
    r0 = [x for x, _ in validation_batches(w, 1, 0, 2, 3)]
    r1 = [x for x, _ in validation_batches(w, 1, 1, 2, 3)]
    assert len(r0) == len(r1) >= 1
    assert not r0[0].equal(r1[0])
    assert r0[0].equal(next(iter(validation_batches(w, 1, 0, 2, 3)))[0])


def test_missing_corpus_path_names_the_fix(tiny_tokenizer, tmp_path):
    cfg = DataConfig(sources=[DataSource(name="ko", path=str(tmp_path / "missing.jsonl"))])
    with pytest.raises(DataError, match=r"data\.sources\[ko\]: .*missing.jsonl does not exist.*sample_corpus"):
        build_shards(cfg, tiny_tokenizer / "tokenizer.model", tmp_path / "out")


def test_empty_corpus_is_an_error(tiny_tokenizer, tmp_path):
    (tmp_path / "empty.jsonl").write_text('{"text": "   "}\n\n')
    cfg = DataConfig(sources=[DataSource(name="ko", path=str(tmp_path / "empty.jsonl"))])
    with pytest.raises(DataError, match="corpus is empty"):
        build_shards(cfg, tiny_tokenizer / "tokenizer.model", tmp_path / "out")


def test_bad_json_line_is_named(tiny_tokenizer, tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "좋아요"}\n{"text": oops}\n')
    cfg = DataConfig(sources=[DataSource(name="ko", path=str(tmp_path / "bad.jsonl"))])
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        build_shards(cfg, tiny_tokenizer / "tokenizer.model", tmp_path / "out")


def test_missing_tokenizer_names_the_fix(tiny_corpus, tmp_path):
    cfg = DataConfig(sources=[DataSource(name="ko", path=str(tiny_corpus["ko"]))])
    with pytest.raises(FileNotFoundError, match="tokenizer.train"):
        build_shards(cfg, tmp_path / "none.model", tmp_path / "out")


def test_manifest_missing_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_pipeline.build"):
        TokenWindows(tmp_path, "train", SEQ)


def test_html_paragraphs_skip_chrome():
    html = """<html><head><title>제목</title><script>var x = "코드";</script></head><body>
    <header><p>LibreOffice Help</p></header>
    <h1>셀 서식</h1><p>셀 범위를 <span class="emph">선택</span>한 다음
    서식을 고릅니다.</p><ul><li>첫째 &amp; 둘째</li></ul><nav>메뉴</nav></body></html>"""
    assert html_paragraphs(html) == ["셀 서식", "셀 범위를 선택한 다음 서식을 고릅니다.", "첫째 & 둘째"]


def test_text_helpers():
    assert hangul_share("한국어 text") == pytest.approx(3 / 7)
    assert hangul_share("1234") == 0.0
    assert normalize("\u1100\u1161") == "가"
