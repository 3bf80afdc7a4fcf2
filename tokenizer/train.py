"""Train the SentencePiece tokenizer and write it with its Hugging Face twin.

    python -m kfm.tokenizer.train [run_dir=runs/demo] [tokenizer.vocab_size=8192] ...

Writes ``<run_dir>/tokenizer/tokenizer.model`` (SentencePiece), ``tokenizer.json`` and
``tokenizer_config.json`` (Hugging Face) and ``train_stats.json``.
"""

from __future__ import annotations

import io
import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import hydra
import sentencepiece as spm
from omegaconf import OmegaConf

from kfm.schemas import register_schemas
from kfm.tokenizer.config import SPECIAL_TOKENS, TokenizerConfig, control_tokens
from kfm.tokenizer.hangul import ksx1001_syllables
from kfm.tokenizer.hf import SPACE, load_proto_bytes, save_hf_tokenizer
from kfm.tokenizer.sampling import sample_mixture
from kfm.tokenizer.superword import add_superwords

log = logging.getLogger(__name__)


@dataclass
class TokenizerJob:
    """``python -m kfm.tokenizer.train``."""

    run_dir: str = "runs/demo"
    """Everything the job writes goes under ``<run_dir>/tokenizer``."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)


def tokenizer_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "tokenizer"


def make_lossless(model_bytes: bytes) -> bytes:
    """Turn off SentencePiece's whitespace escaping after training, so that every string round-trips.

    SentencePiece trains with spaces written as U+2581 ("▁"), which makes a literal U+2581 in the
    input indistinguishable from a space. With escaping off and "▁" in the pieces written back as
    " ", spaces are ordinary characters of the pieces, a literal U+2581 falls back to its bytes,
    and segmentation of all other text is unchanged (checked by the tests against the raw model).
    """
    proto = load_proto_bytes(model_bytes)
    proto.normalizer_spec.escape_whitespaces = False
    for piece in proto.pieces:
        if piece.type == piece.NORMAL:
            piece.piece = piece.piece.replace(SPACE, " ")
    return proto.SerializeToString()


class VocabTooLarge(ValueError):
    """The corpus cannot support the requested vocabulary."""

    def __init__(self, requested: int, limit: int) -> None:
        self.requested, self.limit = requested, limit
        super().__init__(
            f"tokenizer.vocab_size={requested} is more than this corpus supports (at most {limit}): set "
            f"tokenizer.vocab_size<={limit // 128 * 128}, or tokenizer.shrink_vocab_to_fit=true, or add more text"
        )


def train_sentencepiece(sentences: list[str], cfg: TokenizerConfig, vocab_size: int, **extra) -> bytes:
    """Train on ``sentences``; returns the serialised, lossless model (see ``make_lossless``).

    ``extra`` passes further SentencePiece trainer options (e.g. ``pretokenization_delimiter``).
    """
    writer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=writer,
            vocab_size=vocab_size,
            model_type=cfg.model_type,
            character_coverage=cfg.character_coverage,
            required_chars=ksx1001_syllables() if cfg.ksx1001_hangul else "",
            byte_fallback=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            max_sentence_length=cfg.max_sentence_chars * 4,
            unk_id=0, bos_id=1, eos_id=2, pad_id=3,
            control_symbols=control_tokens(cfg.num_reserved_tokens),
            unk_piece=SPECIAL_TOKENS["unk"], bos_piece=SPECIAL_TOKENS["bos"],
            eos_piece=SPECIAL_TOKENS["eos"], pad_piece=SPECIAL_TOKENS["pad"],
            num_threads=cfg.num_threads,
            minloglevel=2,
            **extra,
        )
    except RuntimeError as err:
        if m := re.search(r"Vocabulary size too high \((\d+)\).*<= (\d+)", str(err)):
            raise VocabTooLarge(int(m.group(1)), int(m.group(2))) from err
        if m := re.search(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)", str(err)):
            raise ValueError(
                f"tokenizer.vocab_size={m.group(1)} cannot hold the {m.group(2)} required characters and special "
                "pieces: raise tokenizer.vocab_size, or lower tokenizer.num_reserved_tokens / ksx1001_hangul"
            ) from err
        raise
    return make_lossless(writer.getvalue())


def train_model(sentences: list[str], cfg: TokenizerConfig) -> tuple[bytes, int]:
    """SentencePiece at ``vocab_size`` less the superword share, then the superword pieces (``tokenizer.superword``).

    Returns the model and its size. A corpus too small for ``vocab_size`` is an error, or with
    ``shrink_vocab_to_fit`` gives the largest multiple of 128 it supports.
    """
    n_super = round(cfg.vocab_size * cfg.superword_fraction / 128) * 128  # both stages whole multiples of 128
    first = cfg.vocab_size - n_super
    try:
        model = train_sentencepiece(sentences, cfg, first)
    except VocabTooLarge as err:
        if not cfg.shrink_vocab_to_fit or err.limit < 128:
            raise VocabTooLarge(cfg.vocab_size, err.limit + n_super) from err
        first = err.limit // 128 * 128
        log.warning("vocabulary %d is more than the corpus supports; first stage trains %d", cfg.vocab_size, first)
        model = train_sentencepiece(sentences, cfg, first)
    if n_super:
        t0 = time.perf_counter()
        model = add_superwords(model, sentences, n_super, cfg.superword_max_parts)
        log.info("superword stage: %.1fs", time.perf_counter() - t0)
    proto = load_proto_bytes(model)
    size = len(proto.pieces)
    if size != cfg.vocab_size:
        if not cfg.shrink_vocab_to_fit or size < 128:
            raise VocabTooLarge(cfg.vocab_size, size)
        # Only superword pieces go (each joins earlier pieces only); the first stage, a multiple of 128, stays whole.
        del proto.pieces[first + (size - first) // 128 * 128:]
        proto.trainer_spec.vocab_size = size = len(proto.pieces)
        model = proto.SerializeToString()
        log.warning("vocabulary %d is more than the corpus supports; training %d instead", cfg.vocab_size, size)
    return model, size


def train_tokenizer(cfg: TokenizerConfig, out_dir: str | Path) -> Path:
    """Train on a weighted sample of ``cfg.sources``; returns the ``tokenizer.model`` path.

    Also writes the Hugging Face files and ``train_stats.json`` beside it.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sentences, stats = sample_mixture(
        cfg.sources, cfg.sample_sentences, cfg.max_sentence_chars, cfg.seed, cfg.heldout_fraction
    )
    log.info("sampled %d sentences in %.1fs: %s", len(sentences), time.perf_counter() - t0, stats)
    model, vocab_size = train_model(sentences, cfg)
    final = out / "tokenizer.model"
    final.write_bytes(model)
    save_hf_tokenizer(final, out)
    (out / "train_stats.json").write_text(json.dumps(
        {"config": asdict(cfg), "vocab_size": vocab_size, "sources": stats,
         "seconds": round(time.perf_counter() - t0, 2)}, indent=2))
    log.info("tokenizer (%d pieces) written to %s in %.1fs", vocab_size, out, time.perf_counter() - t0)
    return final


register_schemas("tokenizer_job_schema")


@hydra.main(version_base="1.3", config_path="../configs", config_name="tokenizer_train")
def main(cfg) -> None:
    job: TokenizerJob = OmegaConf.to_object(cfg)
    train_tokenizer(job.tokenizer, tokenizer_dir(job.run_dir))


if __name__ == "__main__":
    main()
