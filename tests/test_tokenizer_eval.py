import base64
import json

import pytest

from kfm.tokenizer.encoders import TokenizerFileError, load_encoder
from kfm.tokenizer.evaluate import EvalSet, EvaluateJob, evaluate


def byte_level_tiktoken(path, merges=("  ", "th", "the", "한")):
    """A valid .tiktoken rank file: the 256 single bytes plus a few merged tokens."""
    tokens = [bytes([b]) for b in range(256)] + [m.encode() for m in merges]
    path.write_text("".join(f"{base64.b64encode(t).decode()} {i}\n" for i, t in enumerate(tokens)))
    return path


def test_loads_each_kind(tiny_tokenizer, tmp_path):
    text = "대한민국 the  cat\n\tdef f(): 😀"
    for path in (tiny_tokenizer / "tokenizer.model", tiny_tokenizer / "tokenizer.json",
                 byte_level_tiktoken(tmp_path / "cl100k_base.tiktoken")):
        enc = load_encoder(path)
        assert enc.decode(enc.encode(text)) == text, path
    tik = load_encoder(tmp_path / "cl100k_base.tiktoken")
    assert tik.vocab_size == 260 + 5 and tik.encode("the") == [258]


def test_bad_reference_files_are_clear_errors(tmp_path):
    with pytest.raises(TokenizerFileError, match="does not exist"):
        load_encoder(tmp_path / "missing.model")
    (tmp_path / "broken.model").write_bytes(b"not a protobuf")
    with pytest.raises(TokenizerFileError, match="not a SentencePiece model"):
        load_encoder(tmp_path / "broken.model")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerFileError, match="not a Hugging Face tokenizer.json"):
        load_encoder(tmp_path / "tokenizer.json")
    (tmp_path / "o200k_base.tiktoken").write_text("@@@ not base64\n")
    with pytest.raises(TokenizerFileError, match="not a .tiktoken rank file"):
        load_encoder(tmp_path / "o200k_base.tiktoken")
    byte_level_tiktoken(tmp_path / "mystery.tiktoken")
    with pytest.raises(TokenizerFileError, match="unknown tiktoken encoding 'mystery'"):
        load_encoder(tmp_path / "mystery.tiktoken")
    (tmp_path / "vocab.txt").write_text("a\n")
    with pytest.raises(TokenizerFileError, match="unknown tokenizer file kind"):
        load_encoder(tmp_path / "vocab.txt")


def test_evaluate_writes_table_chart_and_numbers(tiny_tokenizer, tiny_corpus, tmp_path):
    ref = byte_level_tiktoken(tmp_path / "cl100k_base.tiktoken")
    job = EvaluateJob(
        tokenizer_model=str(tiny_tokenizer / "tokenizer.model"), references=[str(ref)],
        sets=[EvalSet(name="ko", path=str(tiny_corpus["ko"])), EvalSet(name="code", path=str(tiny_corpus["code"]),
                                                                         heldout_only=False)],
        out_dir=str(tmp_path / "eval"),
    )
    results = evaluate(job)
    ko = results["ko"]
    heldout = json.loads((tiny_tokenizer / "train_stats.json").read_text())["config"]["heldout_fraction"]
    assert 0 < ko["kfm"]["docs"] < 300 * heldout * 3  # only the held-out documents
    assert ko["kfm"]["roundtrip_exact"] == 1.0 == ko["cl100k_base"]["roundtrip_exact"]
    # Byte-level with 4 merges needs ~3 tokens per Hangul syllable; kfm needs far fewer.
    assert ko["kfm"]["tokens_per_1k_hangul"] < 0.5 * ko["cl100k_base"]["tokens_per_1k_hangul"]
    assert results["code"]["kfm"]["tokens_per_1k_hangul"] is None
    assert ko["kfm"]["hf_ids_identical"] == 1.0 == results["code"]["kfm"]["hf_ids_identical"]
    table = (tmp_path / "eval" / "eval.md").read_text()
    assert "| kfm |" in table and "vs cl100k_base" in table
    assert (tmp_path / "eval" / "eval.png").stat().st_size > 1000
