"""Superword pieces: SuperBPE's second stage on top of a SentencePiece BPE model.

SuperBPE (Liu et al. 2025, arXiv:2503.13423) trains BPE in two stages: subwords with whitespace
pre-tokenization up to a transition point ``t``, then more merges without it, so that frequent
word sequences ("할 수 있습니다", "of the") become single pieces. kfm's first stage is the
SentencePiece model trained at ``vocab_size - superwords``; the second stage continues BPE on its
segmentation of the same sample, with Hugging Face ``tokenizers``' BPE trainer as the merge
counter (each first-stage piece is one symbol for it), and appends the new pieces to the model
with scores below every first-stage piece, so SentencePiece applies them after the subword merges.

Where superwords may form: SentencePiece's BPE encoder does not split text into words, so a piece
with a space inside is used wherever its parts meet. The Hugging Face twin and the tiktoken batch
encoder split text into pre-tokens first; ``tokenizer.pretokenize.SUPERWORD_PATTERN`` glues two words into one
pre-token exactly when the space between them is a single space with a Hangul syllable or an
ASCII letter on both sides, and the second stage only learns merges inside such pre-tokens. So no
piece spans a pre-token boundary, and all three encoders give the same ids.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from kfm.tokenizer.hf import load_proto_bytes
from kfm.tokenizer.pretokenize import superword_pretokens, superword_safe

_SYMBOL_BASE = 0x10000  # the merge counter sees first-stage piece i as the character chr(_SYMBOL_BASE + i)


def _symbol(i: int) -> str:
    return chr(_SYMBOL_BASE + i)


def learn_merges(words: Iterable[str], alphabet: list[str], n_merges: int, max_parts: int) -> list[tuple[str, str]]:
    """BPE merges, in order, over words written in symbols (one per first-stage piece); each merge as the pair of
    symbol strings it joins. ``max_parts`` bounds how many symbols one new token may join. The words are counted
    inside ``tokenizers`` (Rust), not in Python objects."""
    from tokenizers import Tokenizer, models, trainers

    tok = Tokenizer(models.BPE())
    trainer = trainers.BpeTrainer(vocab_size=len(alphabet) + n_merges, show_progress=False, min_frequency=2,
                                  initial_alphabet=alphabet, limit_alphabet=len(alphabet), max_token_length=max_parts)
    tok.train_from_iterator(words, trainer)
    return [tuple(pair) for pair in json.loads(tok.to_str())["model"]["merges"]]


def _words(sp, sentences: Iterable[str], skip: set[int], batch: int = 4096) -> Iterator[str]:
    """The superword pre-tokens of ``sentences`` as symbol strings (first-stage segmentation), two pieces or more."""
    buf: list[str] = []

    def flush() -> Iterator[str]:
        for ids in sp.encode(buf, num_threads=1):
            if len(ids) > 1 and not skip.intersection(ids):
                yield "".join(map(_symbol, ids))
        buf.clear()

    for sentence in sentences:
        buf.extend(superword_pretokens(sentence))
        if len(buf) >= batch:
            yield from flush()
    yield from flush()


def add_superwords(model_bytes: bytes, sentences: Iterable[str], n: int, max_parts: int = 8) -> bytes:
    """Append up to ``n`` second-stage pieces learned on ``sentences`` to a kfm SentencePiece BPE model."""
    import sentencepiece as spm

    proto = load_proto_bytes(model_bytes)
    if proto.trainer_spec.model_type != proto.trainer_spec.BPE:
        raise ValueError("superword pieces need a BPE model (tokenizer.model_type=bpe)")
    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    pieces = [p.piece for p in proto.pieces]
    normal_ids = [i for i, p in enumerate(proto.pieces) if p.type == p.NORMAL]
    # Byte-fallback pieces stand for parts of a character: a merge across them would not be a string.
    skip = {i for i, p in enumerate(proto.pieces) if p.type != p.NORMAL}
    # The merge counter cannot be told which merges to avoid: ask for a quarter more and drop the pieces that
    # could span a pre-token boundary (a word with a trailing space), and those built from dropped ones.
    merged = learn_merges(_words(sp, sentences, skip), [_symbol(i) for i in normal_ids], n + n // 4 + 8, max_parts)
    known = set(pieces)
    normal = {pieces[i] for i in normal_ids}
    score = min(proto.pieces[i].score for i in normal_ids)
    added = 0
    for a, b in merged:
        a, b = (_text(pieces, x) for x in (a, b))
        text = a + b
        if text in known or a not in normal or b not in normal or not superword_safe(text):
            continue
        known.add(text)
        normal.add(text)
        score -= 1.0
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = text, score, piece.NORMAL
        added += 1
        if added == n:
            break
    proto.trainer_spec.vocab_size = len(proto.pieces)
    return proto.SerializeToString()


def _text(pieces: list[str], symbols: str) -> str:
    return "".join(pieces[ord(c) - _SYMBOL_BASE] for c in symbols)
