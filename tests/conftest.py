import os

import pytest

# Tests never touch a hub or the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.helpers import write_tiny_corpus  # noqa: E402
from tokenizer.config import TextSource, TokenizerConfig  # noqa: E402
from tokenizer.train import train_tokenizer  # noqa: E402

TINY_VOCAB = 768


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    return write_tiny_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_corpus, tmp_path_factory):
    """A 768-piece tokenizer trained on the tiny corpus; returns its folder (SentencePiece + HF files)."""
    out = tmp_path_factory.mktemp("tokenizer")
    cfg = TokenizerConfig(
        sources=[TextSource(path=str(p)) for p in tiny_corpus.values()],
        vocab_size=TINY_VOCAB, ksx1001_hangul=False, sample_sentences=20_000,
    )
    train_tokenizer(cfg, out)
    return out
