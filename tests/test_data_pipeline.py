import json
from collections import Counter

import numpy as np
import pytest
import sentencepiece as spm

from kfm.data_pipeline.build import build_shards, dedup_key
from kfm.data_pipeline.clean import clean_document
from kfm.data_pipeline.config import CleanConfig, DataConfig, DataSource
from kfm.data_pipeline.html_text import html_paragraphs
from kfm.data_pipeline.loader import (
    DistributedLoader,
    MixtureStream,
    TokenWindows,
    document_positions,
    validation_batches,
)
from kfm.data_pipeline.reader import DataError
from kfm.data_pipeline.shards import Manifest, file_sha256
from kfm.data_pipeline.text import hangul_share, normalize
from kfm.tokenizer.sampling import is_heldout

SEQ = 32


@pytest.fixture(scope="module")
def shards(tiny_corpus, tiny_tokenizer, tmp_path_factory):
    cfg = DataConfig(sources=[DataSource(name=k, path=str(v), lang=k) for k, v in tiny_corpus.items()],
                     val_fraction=0.1, num_workers=2, shard_tokens=5000,
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
        assert file_sha256(shards / s.file) == s.sha256 and file_sha256(shards / s.index_file) == s.index_sha256
        tokens = np.fromfile(shards / s.file, dtype=np.uint16)
        offsets = np.fromfile(shards / s.index_file, dtype=np.uint64)
        assert len(offsets) == s.num_docs and offsets.tolist() == np.flatnonzero(tokens == 1).tolist()
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
                     num_workers=1)
    manifest = build_shards(cfg, tiny_tokenizer / "tokenizer.model", tmp_path / "out")
    c = manifest.stats["cleaning"]["ko"]
    assert c == {"docs_in": 7, "docs_kept": 3, "removed_exact_duplicate": 1, "removed_too_short": 1,
                 "removed_low_hangul": 1, "removed_repeated_lines": 1, "pii_phone": 1, "pii_email": 1,
                 "lines_boilerplate": 1, "bytes_in": sum(len(d.encode()) for d in docs),
                 "markup_tags_removed": 4, "markup_chars_removed": len("<p><b></b></p>")}
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


def test_stream_is_a_pure_function_and_each_source_epoch_is_a_permutation(shards):
    a, b = MixtureStream(shards, SEQ, None, seed=7), MixtureStream(shards, SEQ, None, seed=7)
    assert [a.locate(i) for i in range(0, 5000, 37)] == [b.locate(i) for i in range(0, 5000, 37)]
    assert [a.locate(i) for i in range(200)] != [MixtureStream(shards, SEQ, None, seed=8).locate(i) for i in range(200)]
    by_k: dict[int, dict[int, int]] = {}  # source → its k-th sample → window
    for i in range(4000):
        (src, k), (src2, w) = a.source_position(i), a.locate(i)
        assert src == src2 and k not in by_k.setdefault(src, {})
        by_k[src][k] = w
    for src, ks in by_k.items():
        n = len(a.windows[src])
        full = max(k for k in range(len(ks) + 1) if all(j in ks for j in range(k)))  # k's seen without a gap
        assert full >= n  # at least one complete source epoch in 4000 samples
        for e in range(full // n):  # every complete source epoch visits each window exactly once
            assert sorted(ks[k] for k in range(e * n, (e + 1) * n)) == list(range(n)), a.names[src]
    tokens = [w.num_tokens for w in a.windows]  # natural mixture: in proportion to tokens
    assert a.weights == pytest.approx([t / sum(tokens) for t in tokens])


def test_mixture_weights_honoured_within_one_percent(shards):
    weights = {"ko": 0.5, "en": 0.3, "code": 0.2}
    stream = MixtureStream(shards, SEQ, weights, seed=0)
    counts = Counter(stream.names[stream.locate(i)[0]] for i in range(10_000))
    for name, w in weights.items():
        assert abs(counts[name] / 10_000 - w) < 0.01, (name, counts)
    with pytest.raises(ValueError, match=r"names \['wiki'\], which have no train shards"):
        MixtureStream(shards, SEQ, {"wiki": 1.0, "ko": 1.0}, seed=0)


def read_run(stream, plan, lb=3):
    """Global sample ids read by all ranks over a run given as [(world, steps), ...], resuming in between."""
    got, state = [], None
    for world, steps in plan:
        loaders = [DistributedLoader(stream, lb, r, world) for r in range(world)]
        for ld in loaders:
            if state:
                ld.load_state_dict(state)
        for _ in range(steps):
            for ld in loaders:
                got += list(ld.indices())
                ld.next_batch()
        state = loaders[0].state_dict()
        assert all(ld.state_dict() == state for ld in loaders)
    return got


def test_resume_gives_the_uninterrupted_stream_also_on_more_ranks(shards):
    stream = MixtureStream(shards, SEQ, None, seed=3)
    straight = read_run(stream, [(2, 12)])  # 72 samples
    assert straight == list(range(72))  # every sample once, none skipped
    assert read_run(stream, [(2, 5), (2, 7)]) == straight  # stop after step 5, resume
    assert read_run(stream, [(2, 3), (3, 4), (2, 3)]) == straight  # 2 -> 3 -> 2 ranks: 18 + 36 + 18 samples
    loader = DistributedLoader(stream, 3, 1, 2)
    batch = loader.next_batch()
    expected = np.stack([stream.sample(i) for i in (3, 4, 5)])
    assert batch.inputs.numpy().tolist() == expected[:, :-1].tolist()
    assert batch.targets.numpy().tolist() == expected[:, 1:].tolist()
    with pytest.raises(ValueError, match="data stream differs: seed 3 != 4.*trainer.seed"):
        DistributedLoader(MixtureStream(shards, SEQ, None, seed=4), 3, 0, 2).load_state_dict(loader.state_dict())
    reweighted = MixtureStream(shards, SEQ, {"ko": 0.5, "en": 0.3, "code": 0.2}, seed=3)
    with pytest.raises(ValueError, match="data stream differs: weights .*loader.weights"):
        DistributedLoader(reweighted, 3, 0, 2).load_state_dict(loader.state_dict())


def test_document_boundaries_in_every_packed_sequence(shards):
    loader = DistributedLoader(MixtureStream(shards, SEQ, None, seed=0), 4, 0, 1)
    for _ in range(25):
        b = loader.next_batch()
        for x, pos, cu in zip(b.inputs, b.position_ids, b.cu_seqlens):
            # boundaries come from the shards' offset files; every document starts with <s> (id 1)
            starts = sorted({0, *[i for i in range(1, SEQ) if x[i] == 1]})
            assert cu.tolist() == starts + [SEQ]
            for lo, hi in zip(cu[:-1].tolist(), cu[1:].tolist()):
                assert pos[lo:hi].tolist() == list(range(hi - lo))
    positions, cu = document_positions(np.array([2, 6, 8]), 8)
    assert positions.tolist() == [0, 1, 0, 1, 2, 3, 0, 1] and cu.tolist() == [0, 2, 6, 8]


def test_validation_batches_are_fixed_and_sharded(shards):
    w = TokenWindows(shards, "val", SEQ)
    r0 = [b.inputs for b in validation_batches(w, 1, 0, 2, 3)]
    r1 = [b.inputs for b in validation_batches(w, 1, 1, 2, 3)]
    assert len(r0) == len(r1) >= 1
    assert not r0[0].equal(r1[0])
    assert r0[0].equal(next(iter(validation_batches(w, 1, 0, 2, 3))).inputs)


def test_truncated_shard_is_named(shards, tmp_path):
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(shards, copy)
    victim = Manifest.load(copy).split_shards("train")[0].file
    (copy / victim).write_bytes((copy / victim).read_bytes()[:-10])
    with pytest.raises(ValueError, match=f"{victim}: .* the shard is missing or truncated"):
        MixtureStream(copy, SEQ, None, seed=0)


def test_corrupt_shard_is_named_when_verifying(shards, tmp_path):
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(shards, copy)
    victim = Manifest.load(copy).split_shards("train")[-1].file
    raw = bytearray((copy / victim).read_bytes())
    raw[10] ^= 0xFF
    (copy / victim).write_bytes(bytes(raw))
    MixtureStream(copy, SEQ, None, seed=0)  # same size: only the checksum can tell
    with pytest.raises(ValueError, match=f"{victim}: SHA-256 differs from the manifest's"):
        MixtureStream(copy, SEQ, None, seed=0, verify=True)


def test_empty_documents_are_counted(tiny_tokenizer, tmp_path):
    docs = [f"{i}번째 문서입니다. 대한민국은 민주공화국이고 모든 국민은 법 앞에 평등하다." for i in range(20)]
    lines = [json.dumps({"text": t}, ensure_ascii=False) for t in docs + ["", "   ", "\n"]]
    (tmp_path / "ko.jsonl").write_text("\n".join(lines) + "\n")
    cfg = DataConfig(sources=[DataSource(name="ko", path=str(tmp_path / "ko.jsonl"))], val_fraction=0.3,
                     num_workers=1, clean=CleanConfig(dedup_near=False))
    counts = build_shards(cfg, tiny_tokenizer / "tokenizer.model", tmp_path / "out").stats["cleaning"]["ko"]
    assert counts["removed_empty"] == 3 and counts["docs_in"] == 20 and counts["docs_kept"] == 20
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
