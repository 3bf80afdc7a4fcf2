"""Export a SentencePiece model as a Hugging Face fast tokenizer with identical ids.

Written here rather than taken from ``transformers``' slow→fast converters: those assume
Llama's ``add_dummy_prefix`` and U+2581 space escaping, while kfm's models use identity
normalisation, no dummy prefix, literal spaces in pieces (see ``tokenizer.train.make_lossless``)
and whitespace-only pieces; the pre-tokenizer below reproduces exactly how SentencePiece splits
such text into words.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from kfm.tokenizer.config import CHAT_TEMPLATE, SPECIAL_TOKENS
from kfm.tokenizer.pretokenize import pattern_for

SPACE = "\u2581"  # how SentencePiece writes a space while training
UNREACHABLE = -1e9


def load_proto_bytes(model_bytes: bytes) -> sentencepiece_model_pb2.ModelProto:
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_bytes)
    return proto


def bpe_merges(proto: sentencepiece_model_pb2.ModelProto) -> list[tuple[str, str]]:
    """Merge list equivalent to a SentencePiece BPE model.

    SentencePiece BPE repeatedly joins the adjacent pair whose concatenation is the
    highest-scoring piece; a rank-ordered merge list reproduces that when every way of
    splitting a piece into two vocabulary pieces is listed at the piece's own rank.
    """
    normal = {p.piece: i for i, p in enumerate(proto.pieces) if p.type in (p.NORMAL, p.USER_DEFINED)}
    ranked = sorted(normal, key=lambda piece: (-proto.pieces[normal[piece]].score, normal[piece]))
    merges = []
    for piece in ranked:
        splits = [(piece[:k], piece[k:]) for k in range(1, len(piece))]
        found = [(a, b) for a, b in splits if a in normal and b in normal]
        merges += sorted(found, key=lambda ab: (normal[ab[0]], normal[ab[1]]))
    return merges


def build_fast_tokenizer(model_file: str | Path) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` that encodes and decodes like the SentencePiece model (unigram or BPE)."""
    proto = load_proto_bytes(Path(model_file).read_bytes())
    spec = proto.trainer_spec
    norm = proto.normalizer_spec
    if norm.name != "identity" or norm.add_dummy_prefix or norm.escape_whitespaces:
        raise ValueError(
            f"{model_file}: expected kfm's recipe (identity normalisation, no dummy prefix, no whitespace "
            "escaping); train it with `python -m kfm.tokenizer.train`"
        )
    if spec.model_type == spec.UNIGRAM:
        # Only normal pieces may match text: special, control and byte pieces are reached by id
        # (byte fallback, added tokens), as in SentencePiece. A score far below any real one keeps
        # the Unigram lattice from ever choosing them for literal text such as "<0x41>".
        normal = (proto.pieces[0].NORMAL, proto.pieces[0].USER_DEFINED)
        vocab = [(p.piece, p.score if p.type in normal else UNREACHABLE) for p in proto.pieces]
        model = models.Unigram(vocab, unk_id=spec.unk_id, byte_fallback=spec.byte_fallback)
    elif spec.model_type == spec.BPE:
        # Merges only join normal pieces, so "<0x41>" or "<s>" in text is never one token by accident.
        vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
        model = models.BPE(vocab, bpe_merges(proto), unk_token=proto.pieces[spec.unk_id].piece,
                           byte_fallback=spec.byte_fallback, fuse_unk=False)
    else:
        raise ValueError(f"{model_file}: SentencePiece model type {spec.model_type} cannot be exported "
                         "(unigram and bpe can)")
    tok = Tokenizer(model)
    # No piece spans a boundary of the pattern (see tokenizer.pretokenize), so merging inside
    # pre-tokens gives SentencePiece's result. Spaces are plain characters of the pieces.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern_for(proto)), behavior="isolated")
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    bos = SPECIAL_TOKENS["bos"]
    specials = [p.piece for p in proto.pieces if p.type in (p.CONTROL, p.UNKNOWN)]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, spec.bos_id)]
    )
    return tok


def _control_pieces(model_file: str | Path) -> list[str]:
    proto = load_proto_bytes(Path(model_file).read_bytes())
    return [p.piece for p in proto.pieces if p.type == p.CONTROL and p.piece not in SPECIAL_TOKENS.values()]


def save_hf_tokenizer(model_file: str | Path, out_dir: str | Path, model_max_length: int = 4096) -> Path:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` (with the chat template) and ``tokenizer.model``."""
    from transformers import PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=build_fast_tokenizer(model_file),
        bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["eos"],
        unk_token=SPECIAL_TOKENS["unk"],
        pad_token=SPECIAL_TOKENS["pad"],
        additional_special_tokens=[p for p in _control_pieces(model_file)],
        chat_template=CHAT_TEMPLATE,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    # The chat template goes into tokenizer_config.json, which transformers 4.x and 5.x both read.
    hf.save_pretrained(str(out), save_jinja_files=False)
    if Path(model_file).resolve() != (out / "tokenizer.model").resolve():
        shutil.copyfile(model_file, out / "tokenizer.model")
    return out


def require_model_file(model_file: str | Path) -> Path:
    path = Path(model_file)
    if not path.is_file():
        raise FileNotFoundError(
            f"tokenizer model {model_file} not found: train one with `python -m kfm.tokenizer.train` "
            "or set the tokenizer path in the config"
        )
    return path


def load_sentencepiece(model_file: str | Path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(require_model_file(model_file)))
