"""Export a SentencePiece model as a Hugging Face fast tokenizer with identical ids.

Written here rather than taken from ``transformers``' slow→fast converters: those assume
Llama's ``add_dummy_prefix`` and NFKC habits, while kfm trains with identity normalisation,
no dummy prefix and whitespace-only pieces; the pre-tokenizer below reproduces exactly how
SentencePiece splits such text into words.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from tokenizer.config import SPECIAL_TOKENS

SPACE = "\u2581"  # SentencePiece's visible space


def load_proto(model_file: str | Path) -> sentencepiece_model_pb2.ModelProto:
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(model_file).read_bytes())
    return proto


def build_fast_tokenizer(model_file: str | Path) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` that encodes and decodes like the SentencePiece model."""
    proto = load_proto(model_file)
    spec = proto.trainer_spec
    if spec.model_type != sentencepiece_model_pb2.TrainerSpec.UNIGRAM:
        raise ValueError(f"{model_file}: only unigram SentencePiece models can be exported, not {spec.model_type}")
    if proto.normalizer_spec.name != "identity" or proto.normalizer_spec.add_dummy_prefix:
        raise ValueError(f"{model_file}: expected identity normalisation without a dummy prefix (kfm's recipe)")
    vocab = [(p.piece, p.score) for p in proto.pieces]
    tok = Tokenizer(models.Unigram(vocab, unk_id=spec.unk_id, byte_fallback=spec.byte_fallback))
    tok.normalizer = normalizers.Replace(" ", SPACE)
    # SentencePiece starts a new word at a space that follows a non-space; runs of spaces stay
    # together (allow_whitespace_only_pieces).
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(f"{SPACE}+[^{SPACE}]*|[^{SPACE}]+"), behavior="isolated")
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    bos = SPECIAL_TOKENS["bos"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, spec.bos_id)]
    )
    return tok


def save_hf_tokenizer(model_file: str | Path, out_dir: str | Path, model_max_length: int = 4096) -> Path:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and a copy of ``tokenizer.model`` to ``out_dir``."""
    from transformers import PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=build_fast_tokenizer(model_file),
        bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["eos"],
        unk_token=SPECIAL_TOKENS["unk"],
        pad_token=SPECIAL_TOKENS["pad"],
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    hf.save_pretrained(str(out))
    if Path(model_file).resolve() != (out / "tokenizer.model").resolve():
        shutil.copyfile(model_file, out / "tokenizer.model")
    return out


def load_sentencepiece(model_file: str | Path) -> spm.SentencePieceProcessor:
    if not Path(model_file).is_file():
        raise FileNotFoundError(
            f"tokenizer model {model_file} not found: train one with `python -m tokenizer.train` "
            "or set the tokenizer path in the config"
        )
    return spm.SentencePieceProcessor(model_file=str(model_file))
