"""Load any tokenizer file behind one small interface: kfm's own and the reference tokenizers.

``.model`` → SentencePiece, ``tokenizer.json`` → Hugging Face ``tokenizers``,
``<name>.tiktoken`` → tiktoken (``o200k_base``, ``cl100k_base``, ... : the split pattern
and special tokens come from tiktoken's own registry, the ranks from the local file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from unittest import mock


class TokenizerFileError(ValueError):
    """A tokenizer file is missing, of an unknown kind, or does not parse."""


@dataclass
class Encoder:
    name: str
    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]
    vocab_size: int


def _sentencepiece(path: Path) -> Encoder:
    import sentencepiece as spm

    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as err:
        raise TokenizerFileError(f"{path}: not a SentencePiece model ({err})") from err
    return Encoder(path.stem if path.stem != "tokenizer" else path.parent.name, sp.encode, sp.decode,
                   sp.get_piece_size())


def _hf_tokenizers(path: Path) -> Encoder:
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as err:  # noqa: BLE001 - the Rust side raises a bare Exception
        raise TokenizerFileError(f"{path}: not a Hugging Face tokenizer.json ({err})") from err
    return Encoder(path.parent.name, lambda t: tok.encode(t, add_special_tokens=False).ids,
                   lambda ids: tok.decode(ids, skip_special_tokens=False), tok.get_vocab_size())


def _tiktoken(path: Path) -> Encoder:
    import tiktoken
    import tiktoken_ext.openai_public as public
    from tiktoken.load import load_tiktoken_bpe

    ctor = public.ENCODING_CONSTRUCTORS.get(path.stem)
    if ctor is None:
        raise TokenizerFileError(f"{path}: unknown tiktoken encoding {path.stem!r}; name the file after one of "
                                 f"{sorted(public.ENCODING_CONSTRUCTORS)}")
    try:
        ranks = load_tiktoken_bpe(str(path))
    except Exception as err:  # noqa: BLE001 - base64/format errors of every kind
        raise TokenizerFileError(f"{path}: not a .tiktoken rank file ({err})") from err
    # Reuse tiktoken's own pattern and specials; only the ranks come from the local file.
    with mock.patch.object(public, "load_tiktoken_bpe", lambda *a, **k: ranks):
        params = ctor()
    enc = tiktoken.Encoding(**params)
    return Encoder(path.stem, enc.encode_ordinary, enc.decode, len(ranks) + len(params["special_tokens"]))


def load_encoder(path: str | Path) -> Encoder:
    path = Path(path).expanduser()
    if not path.is_file():
        raise TokenizerFileError(f"tokenizer file {path} does not exist (run bench/fetch_reference_tokenizers.sh "
                                 "for the reference tokenizers)")
    if path.suffix == ".model":
        return _sentencepiece(path)
    if path.suffix == ".json":
        return _hf_tokenizers(path)
    if path.suffix == ".tiktoken":
        return _tiktoken(path)
    raise TokenizerFileError(f"{path}: unknown tokenizer file kind; expected .model, tokenizer.json or .tiktoken")
