import json
import random

import pytest
import sentencepiece as spm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from kfm.tokenizer.config import TextSource, TokenizerConfig, control_tokens
from kfm.tokenizer.hangul import ksx1001_syllables
from kfm.tokenizer.hf import SPACE, load_proto_bytes
from kfm.tokenizer.sampling import CorpusError, reservoir_sample, sample_mixture
from kfm.tokenizer.train import VocabTooLarge, train_tokenizer
from tests.helpers import FIXED_CASES, random_strings


@pytest.fixture(scope="module")
def sp(tiny_tokenizer_any):
    return spm.SentencePieceProcessor(model_file=str(tiny_tokenizer_any / "tokenizer.model"))


@pytest.fixture(scope="module")
def hf_tok(tiny_tokenizer_any):
    return AutoTokenizer.from_pretrained(str(tiny_tokenizer_any), local_files_only=True)


@pytest.mark.parametrize("text", FIXED_CASES)
def test_sentencepiece_round_trips_exactly(sp, text):
    assert sp.decode(sp.encode(text)) == text


def test_sentencepiece_round_trips_random_text(sp):
    for text in random_strings(500):
        assert sp.decode(sp.encode(text)) == text, repr(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=60))
def test_round_trip_property(sp, hf_tok, text):
    """Any Unicode string (surrogates cannot be UTF-8) round-trips through SentencePiece and HF alike."""
    ids = sp.encode(text)
    assert sp.decode(ids) == text
    assert hf_tok.decode(ids) == text
    if not any(t in text for t in hf_tok.all_special_tokens):
        assert hf_tok(text, add_special_tokens=False)["input_ids"] == ids


def test_literal_u2581_is_not_a_space(sp):
    # SentencePiece trains with spaces written as U+2581; kfm's models keep the two apart.
    for text in ("a\u2581b", "\u2581\u2581 \u2581", " \u2581lead"):
        assert sp.decode(sp.encode(text)) == text
    assert sp.encode("a\u2581b") != sp.encode("a b")


def test_lossless_rewrite_keeps_segmentation(tiny_tokenizer_any, tiny_corpus):
    """Against the model as SentencePiece trained it (spaces escaped as U+2581), ids are identical."""
    proto = load_proto_bytes((tiny_tokenizer_any / "tokenizer.model").read_bytes())
    proto.normalizer_spec.escape_whitespaces = True
    for piece in proto.pieces:
        if piece.type == piece.NORMAL:
            piece.piece = piece.piece.replace(" ", SPACE)
    raw = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    sp = spm.SentencePieceProcessor(model_file=str(tiny_tokenizer_any / "tokenizer.model"))
    texts = [t for t in FIXED_CASES + random_strings(200, seed=3) if SPACE not in t]
    for path in tiny_corpus.values():
        texts += path.read_text(encoding="utf-8").splitlines()[:100]
    for text in texts:
        assert sp.encode(text) == raw.encode(text), repr(text)


def test_specials_and_vocab(sp):
    assert sp.get_piece_size() == 768
    assert [sp.id_to_piece(i) for i in range(4)] == ["<unk>", "<s>", "</s>", "<pad>"]
    assert sp.piece_to_id("<0x0A>") != sp.unk_id()  # byte fallback pieces exist


def test_hf_tokenizer_matches_sentencepiece(sp, hf_tok, tiny_corpus):
    # HF parses special-token strings in text ("<s>", "<|im_start|>") as specials; all else must match.
    texts = [t.replace("<s></s><unk><pad>", "") for t in FIXED_CASES] + random_strings(300, seed=1)
    texts += ["<0x41> <0xEB> look like byte pieces", "<|reserved|> <|im_start> almost special"]
    texts += tiny_corpus["code"].read_text(encoding="utf-8").splitlines()[:50]
    texts += tiny_corpus["ko"].read_text(encoding="utf-8").splitlines()[:50]
    for text in texts:
        assert hf_tok(text, add_special_tokens=False)["input_ids"] == sp.encode(text), repr(text)
        assert hf_tok.decode(sp.encode(text)) == text, repr(text)


def test_hf_tokenizer_adds_bos_and_knows_specials(sp, hf_tok):
    ids = hf_tok("대한민국")["input_ids"]
    assert ids == [sp.bos_id(), *sp.encode("대한민국")]
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id, hf_tok.unk_token_id) == (1, 2, 3, 0)


def test_special_tokens_have_fixed_ids_and_never_come_from_text(sp, hf_tok):
    names = [sp.id_to_piece(i) for i in range(4, 4 + len(control_tokens(64)))]
    assert names == control_tokens(64)
    assert names[:2] == ["<|im_start|>", "<|im_end|>"] and names[-1] == "<|reserved_63|>"
    assert all(sp.is_control(i) for i in range(4, 4 + len(names)))
    for name in names:
        assert sp.encode(name) != [sp.piece_to_id(name)]  # plain text in SentencePiece
        assert hf_tok(name, add_special_tokens=False)["input_ids"] == [sp.piece_to_id(name)]  # special in HF
    assert "<|fim_middle|>" in hf_tok.all_special_tokens


def test_chat_template(sp, hf_tok):
    messages = [{"role": "user", "content": "안녕하세요?"}, {"role": "assistant", "content": "네, 안녕하세요."}]
    text = hf_tok.apply_chat_template(messages, tokenize=False)
    assert text == "<s><|im_start|>user\n안녕하세요?<|im_end|>\n<|im_start|>assistant\n네, 안녕하세요.<|im_end|>\n"
    prompt = hf_tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = hf_tok(text, add_special_tokens=False)["input_ids"]
    start, end = sp.piece_to_id("<|im_start|>"), sp.piece_to_id("<|im_end|>")
    assert ids[0] == sp.bos_id() and ids[1] == start and ids.count(start) == 2 and ids.count(end) == 2
    assert hf_tok.decode(ids, skip_special_tokens=True) == "user\n안녕하세요?\nassistant\n네, 안녕하세요.\n"


def test_tokenizer_files_written(tiny_tokenizer):
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "train_stats.json"):
        assert (tiny_tokenizer / name).is_file()


def test_ksx1001_has_2350_syllables():
    s = ksx1001_syllables()
    assert len(s) == 2350 == len(set(s))
    assert "가" in s and "힝" in s and "뷁" not in s and "똠" not in s


def test_reservoir_sample_is_uniform_and_bounded():
    rng = random.Random(0)
    counts = [0] * 10
    for _ in range(2000):
        sample, seen = reservoir_sample(iter(range(10)), 3, rng)
        assert seen == 10 and len(sample) == 3 == len(set(sample))
        for x in sample:
            counts[x] += 1
    assert all(abs(c / 2000 - 0.3) < 0.05 for c in counts)


def test_mixture_respects_weights(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("".join(f"a{i}\n" for i in range(1000)))
    b.write_text("".join(f"b{i}\n" for i in range(1000)))
    out, stats = sample_mixture([TextSource(str(a), weight=3), TextSource(str(b), weight=1)], 400, 100, 0)
    assert sum(s.startswith("a") for s in out) == 300 and sum(s.startswith("b") for s in out) == 100
    assert stats[str(a)]["sentences_seen"] == 1000


def test_missing_and_bad_tokenizer_inputs(tmp_path):
    with pytest.raises(CorpusError, match="does not exist.*data_pipeline.sample_corpus"):
        sample_mixture([TextSource(str(tmp_path / "nope.jsonl"))], 10, 100, 0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "x"}\n')
    with pytest.raises(CorpusError, match=r"bad.jsonl:2: no string field 'text'"):
        sample_mixture([TextSource(str(bad))], 10, 100, 0)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(CorpusError, match="holds no text"):
        sample_mixture([TextSource(str(empty))], 10, 100, 0)


def test_non_utf8_file_names_file_and_line(tmp_path):
    bad = tmp_path / "cp949.txt"
    bad.write_bytes("첫 줄은 괜찮다\n".encode() + "둘째 줄은 CP949\n".encode("cp949"))
    with pytest.raises(CorpusError, match=r"cp949.txt:2: not valid UTF-8.*iconv"):
        sample_mixture([TextSource(str(bad))], 10, 100, 0)


def test_vocab_too_large_is_clear_or_shrinks(tiny_corpus, tmp_path):
    cfg = TokenizerConfig(sources=[TextSource(str(p)) for p in tiny_corpus.values()], vocab_size=16384,
                          ksx1001_hangul=False)
    with pytest.raises(VocabTooLarge, match=r"vocab_size=16384 is more than this corpus supports.*shrink_vocab_to_fit"):
        train_tokenizer(cfg, tmp_path / "a")
    cfg.shrink_vocab_to_fit = True
    model = train_tokenizer(cfg, tmp_path / "b")
    size = spm.SentencePieceProcessor(model_file=str(model)).get_piece_size()
    assert size % 128 == 0 and 768 <= size < 16384
    assert json.loads((tmp_path / "b" / "train_stats.json").read_text())["vocab_size"] == size


def test_vocab_too_small_for_required_pieces(tiny_corpus, tmp_path):
    cfg = TokenizerConfig(sources=[TextSource(str(tiny_corpus["ko"]))], vocab_size=1024, ksx1001_hangul=True)
    with pytest.raises(ValueError, match="cannot hold the .* required characters"):
        train_tokenizer(cfg, tmp_path)


def test_config_rejects_bad_vocab():
    with pytest.raises(ValueError, match="multiple of 128"):
        TokenizerConfig(vocab_size=1000)


def test_ksx1001_syllables_are_single_pieces_even_when_unseen(tiny_corpus, tmp_path):
    cfg = TokenizerConfig(sources=[TextSource(str(p)) for p in tiny_corpus.values()], vocab_size=8192,
                          ksx1001_hangul=True, shrink_vocab_to_fit=True)
    sp = spm.SentencePieceProcessor(model_file=str(train_tokenizer(cfg, tmp_path)))
    seen = set("".join(p.read_text(encoding="utf-8") for p in tiny_corpus.values()))
    syllables = ksx1001_syllables()
    assert len(set(syllables) - seen) > 2000  # most of them never occur in the tiny corpus
    for s in syllables:
        ids = sp.encode(s)
        assert len(ids) == 1 and sp.id_to_piece(ids[0]) == s, s
