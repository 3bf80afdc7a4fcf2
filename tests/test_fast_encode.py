"""The pipeline's batch encoders give exactly SentencePiece's ids."""

import numpy as np
import pytest
import sentencepiece as spm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kfm.tokenizer.fast_encode import SentencePieceBatchEncoder, TiktokenBPE, batch_encoder
from tests.helpers import FIXED_CASES, random_strings


@pytest.fixture(scope="module")
def pair(tiny_tokenizer_any):
    model = tiny_tokenizer_any / "tokenizer.model"
    return spm.SentencePieceProcessor(model_file=str(model)), batch_encoder(model)


def test_picks_the_engine_by_model_type(pair, tiny_tokenizer_any):
    _, enc = pair
    is_bpe = tiny_tokenizer_any.name.startswith("tokenizer-bpe")
    assert isinstance(enc, TiktokenBPE if is_bpe else SentencePieceBatchEncoder)


def test_same_ids_on_corpus_and_edge_cases(pair, tiny_corpus):
    sp, enc = pair
    texts = FIXED_CASES + random_strings(400, seed=5)
    for path in tiny_corpus.values():
        texts += path.read_text(encoding="utf-8").split("\n")
    texts += ["뷁 똠 햏 쀍 \U0001f600 \u2581 <0x41>"]  # characters outside the tiny vocabulary
    got = enc.encode_batch(texts)
    assert all(a.dtype == np.int32 for a in got)
    for text, ids in zip(texts, got):
        assert ids.tolist() == sp.encode(text) == enc.encode(text), repr(text)
    assert enc.encode_batch([]) == []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40), max_size=4))
def test_same_ids_property(pair, texts):
    sp, enc = pair
    assert [a.tolist() for a in enc.encode_batch(texts)] == [sp.encode(t) for t in texts]


def test_missing_model_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.train"):
        batch_encoder(tmp_path / "none.model")
