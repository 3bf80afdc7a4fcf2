"""Superword pieces (SuperBPE's second stage): learned, used, and encoded alike by all three encoders."""

import random

import numpy as np
import pytest
import sentencepiece as spm
from tokenizers import Tokenizer

from kfm.tokenizer.config import TextSource, TokenizerConfig
from kfm.tokenizer.fast_encode import TiktokenBPE
from kfm.tokenizer.hf import load_proto_bytes
from kfm.tokenizer.pretokenize import has_superwords, superword_pretokens
from kfm.tokenizer.train import VocabTooLarge, train_tokenizer
from tests.helpers import FIXED_CASES, random_strings


@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    return tiny_tokenizer / "tokenizer.model"


@pytest.fixture(scope="module")
def superwords(model):
    proto = load_proto_bytes(model.read_bytes())
    return [p.piece for p in proto.pieces if p.type == p.NORMAL and " " in p.piece.lstrip(" ")]


def test_pretokens_glue_words_only_across_one_space_between_letters():
    assert superword_pretokens("할 수 있습니다. 그리고  of the 1 a b.c d e. f") == [
        "할 수 있습니다.", " 그리고", "  of the", " 1", " a b.c d e.", " f"]
    assert superword_pretokens("가 a\tb") == ["가 a\tb"]
    assert "".join(superword_pretokens("  x  y z ")) == "  x  y z "


def test_default_recipe_learns_superwords_at_the_end_of_the_vocabulary(model, superwords, tiny_corpus):
    proto = load_proto_bytes(model.read_bytes())
    assert has_superwords(proto) and len(proto.pieces) == 768
    assert len(superwords) >= 10
    first_super = min(i for i, p in enumerate(proto.pieces) if p.piece in set(superwords))
    assert first_super >= 768 - 128  # 10% of 768, rounded to whole 128s
    assert all(len(p.piece) > 1 for p in proto.pieces[first_super:])
    sp = spm.SentencePieceProcessor(model_file=str(model))
    used = {sp.id_to_piece(i) for p in tiny_corpus.values() for i in sp.encode(p.read_text(encoding="utf-8"))}
    assert len(used & set(superwords)) >= 10


def test_superwords_compress_held_out_text(tiny_corpus, tmp_path):
    sources = [TextSource(str(p)) for p in tiny_corpus.values()]
    counts = {}
    for frac in (0.0, 0.1):
        cfg = TokenizerConfig(sources=sources, vocab_size=768, ksx1001_hangul=False, sample_sentences=20_000,
                              superword_fraction=frac, heldout_fraction=0.4)
        sp = spm.SentencePieceProcessor(model_file=str(train_tokenizer(cfg, tmp_path / str(frac))))
        # Held-out documents (the same hash split the trainer skipped).
        from kfm.tokenizer.sampling import is_heldout, iter_documents
        docs = [d for s in sources for d in iter_documents(s) if is_heldout(d, 0.4)]
        assert docs
        counts[frac] = sum(len(sp.encode(d)) for d in docs)
        assert all(sp.decode(sp.encode(d)) == d for d in docs)
    assert counts[0.1] < 0.97 * counts[0.0], counts


def _mixtures(superwords, n, seed):
    rng = random.Random(seed)
    seps = ["", " ", "  ", ".", ",", "\n", "\t", "1", "a", "가", "é", "😀", " (", "\u2581"]
    pool = superwords + [w.split(" ")[-1] for w in superwords]
    out = []
    for _ in range(n):
        parts = [rng.choice(pool) + rng.choice(seps) for _ in range(rng.randint(1, 6))]
        out.append("".join(parts))
    return out


def test_sentencepiece_hf_and_tiktoken_agree_around_superwords(model, superwords, tiny_tokenizer, tiny_corpus):
    sp = spm.SentencePieceProcessor(model_file=str(model))
    hf = Tokenizer.from_file(str(tiny_tokenizer / "tokenizer.json"))
    fast = TiktokenBPE(model)
    # HF parses special-token strings in text ("<s>") as specials; all else must match.
    texts = _mixtures(superwords, 600, seed=1) + random_strings(200, seed=9)
    texts += [t.replace("<s></s><unk><pad>", "") for t in FIXED_CASES]
    for path in tiny_corpus.values():
        texts += path.read_text(encoding="utf-8").split("\n")
    super_ids = {sp.piece_to_id(w) for w in superwords}
    hits = 0
    for text, ids in zip(texts, fast.encode_batch(texts)):
        want = sp.encode(text)
        assert ids.dtype == np.int32 and ids.tolist() == want, repr(text)
        assert hf.encode(text, add_special_tokens=False).ids == want, repr(text)
        assert sp.decode(want) == text
        hits += bool(super_ids & set(want))
    assert hits > 300  # the superword pieces were exercised, not just plain text


def test_config_checks_and_shortfall(tiny_corpus, tmp_path):
    with pytest.raises(ValueError, match="superword_fraction needs tokenizer.model_type=bpe"):
        TokenizerConfig(model_type="unigram")
    with pytest.raises(ValueError, match=r"superword_fraction must be in \[0, 0.5\)"):
        TokenizerConfig(superword_fraction=0.6)
    # More superword pieces than the corpus has pairs for: a clear error, or the largest multiple of 128.
    cfg = TokenizerConfig(sources=[TextSource(str(tiny_corpus["ko"]))], vocab_size=1024, ksx1001_hangul=False,
                          superword_fraction=0.45, sample_sentences=500)
    try:
        train_tokenizer(cfg, tmp_path / "a")
    except VocabTooLarge as err:
        assert "shrink_vocab_to_fit" in str(err)
        cfg.shrink_vocab_to_fit = True
        sp = spm.SentencePieceProcessor(model_file=str(train_tokenizer(cfg, tmp_path / "b")))
        assert sp.get_piece_size() % 128 == 0 and sp.get_piece_size() < 1024
        text = tiny_corpus["ko"].read_text(encoding="utf-8")
        assert sp.decode(sp.encode(text)) == text
        hangul = {c for c in text if "\uac00" <= c <= "\ud7a3"}
        assert all(len(sp.encode(c)) == 1 for c in hangul)  # the first stage kept whole: no syllable lost to bytes
    else:
        pytest.fail("500 sentences of the tiny corpus cannot hold 460 superword pieces")
