"""The sample-corpus builder on local stand-ins for the registry packages (no network)."""

import json
import zipfile

import pytest

from kfm.data_pipeline import sample_corpus as sc


def fake_debs(tmp_path):
    def fetch(packages, dest):
        roots = {}
        for pkg in packages:
            root = dest / pkg
            (root / "help").mkdir(parents=True)
            if pkg.endswith("-ko"):
                page = ("<html><body><header><p>LibreOffice 도움말</p></header>"
                        "<h1>셀 서식</h1><p>셀 범위를 선택한 다음 서식 메뉴에서 셀 서식을 고릅니다.</p>"
                        "<p>셀 범위를 선택한 다음 서식 메뉴에서 셀 서식을 고릅니다.</p>"
                        f"<p>{pkg} 꾸러미의 문단은 한국어로 되어 있습니다.</p><p>Only English here, skipped.</p></body></html>")
            else:
                page = ("<html><body><p>Select the cell range and choose the cell format from the menu.</p>"
                        "<p>셀 범위</p></body></html>")
            (root / "help" / "a.html").write_text(page, encoding="utf-8")
            roots[pkg] = root
        return roots
    return fetch


def fake_wheel(requirement, dest):
    path = dest / "konlpy-0.6.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("konlpy/data/corpus/kolaw/constitution.txt", "대한민국헌법\n\n제1조 대한민국은 민주공화국이다.\n")
        zf.writestr("konlpy/corpus.py", "print('not text')\n")
    return path


def read(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_builds_dedups_and_caches(tmp_path, monkeypatch):
    monkeypatch.setattr(sc, "fetch_debs", fake_debs(tmp_path))
    monkeypatch.setattr(sc, "fetch_wheel", fake_wheel)
    cfg = sc.SampleCorpusConfig(out_dir=str(tmp_path / "corpus"), code_max_bytes=20_000)
    out = sc.build_sample_corpus(cfg)
    ko = read(out / "ko.jsonl")
    texts = "\n".join(d["text"] for d in ko)
    assert texts.count("셀 범위를 선택한 다음") == 1  # exact paragraph dedup across pages
    assert "LibreOffice 도움말" not in texts and "Only English" not in texts
    assert "제1조 대한민국은 민주공화국이다." in texts
    assert {d["lang"] for d in ko} == {"ko"} and any(d["source"].startswith("pypi:konlpy") for d in ko)
    en = read(out / "en.jsonl")
    assert [d["text"] for d in en] == ["Select the cell range and choose the cell format from the menu."]
    code = read(out / "code.jsonl")
    assert code and sum(len(d["text"].encode()) for d in code) <= 20_000
    meta = json.loads((out / "manifest.json").read_text())
    assert meta["stats"]["ko"]["docs"] == len(ko) and meta["unavailable"] == []

    # A second call finds the cache and fetches nothing.
    monkeypatch.setattr(sc, "fetch_debs", lambda *a: pytest.fail("refetched"))
    assert sc.build_sample_corpus(cfg) == out


def test_unavailable_sources_are_reported_and_skipped(tmp_path, monkeypatch):
    def no_debs(packages, dest):
        raise sc.SourceUnavailable("apt-get/dpkg-deb not found")
    monkeypatch.setattr(sc, "fetch_debs", no_debs)
    monkeypatch.setattr(sc, "fetch_wheel", fake_wheel)
    out = sc.build_sample_corpus(sc.SampleCorpusConfig(out_dir=str(tmp_path / "c"), code_max_bytes=1000))
    meta = json.loads((out / "manifest.json").read_text())
    assert len(meta["unavailable"]) == 2 and meta["stats"]["ko"]["docs"] == 1


def test_no_korean_at_all_is_a_clear_error(tmp_path, monkeypatch):
    def unavailable(*args):
        raise sc.SourceUnavailable("offline")
    monkeypatch.setattr(sc, "fetch_debs", unavailable)
    monkeypatch.setattr(sc, "fetch_wheel", unavailable)
    with pytest.raises(RuntimeError, match="no Korean text.*data.sources"):
        sc.build_sample_corpus(sc.SampleCorpusConfig(out_dir=str(tmp_path / "c")))
    assert not (tmp_path / "c").exists() and not list(tmp_path.glob("c.partial-*"))


def test_chunk_code_cuts_at_blank_lines_and_loses_nothing():
    text = "\n\n".join(f"def f{i}():\n    return {i}" for i in range(50))
    chunks = sc.chunk_code(text, 200)
    assert len(chunks) > 5 and all(len(c) <= 200 for c in chunks)
    assert "\n\n".join(chunks) == text
