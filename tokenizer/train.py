"""Train the SentencePiece tokenizer and write it with its Hugging Face twin.

    python -m tokenizer.train [run_dir=runs/demo] [tokenizer.vocab_size=8192] ...

Writes ``<run_dir>/tokenizer/tokenizer.model`` (SentencePiece), ``tokenizer.json`` and
``tokenizer_config.json`` (Hugging Face) and ``train_stats.json``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import hydra
import sentencepiece as spm
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from tokenizer.config import SPECIAL_TOKENS, TokenizerConfig, control_tokens
from tokenizer.hangul import ksx1001_syllables
from tokenizer.hf import SPACE, load_proto_bytes, save_hf_tokenizer
from tokenizer.sampling import sample_mixture

log = logging.getLogger(__name__)


@dataclass
class TokenizerJob:
    """``python -m tokenizer.train``."""

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


def train_tokenizer(cfg: TokenizerConfig, out_dir: str | Path) -> Path:
    """Train on a weighted sample of ``cfg.sources``; returns the ``tokenizer.model`` path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sentences, stats = sample_mixture(
        cfg.sources, cfg.sample_sentences, cfg.max_sentence_chars, cfg.seed, cfg.heldout_fraction
    )
    log.info("sampled %d sentences in %.1fs: %s", len(sentences), time.perf_counter() - t0, stats)
    prefix = out / "sentencepiece_raw"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_prefix=str(prefix),
        vocab_size=cfg.vocab_size,
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
    )
    final = out / "tokenizer.model"
    final.write_bytes(make_lossless(prefix.with_suffix(".model").read_bytes()))
    prefix.with_suffix(".model").unlink()
    prefix.with_suffix(".vocab").replace(out / "tokenizer.vocab")
    save_hf_tokenizer(final, out)
    (out / "train_stats.json").write_text(
        json.dumps({"config": asdict(cfg), "sources": stats, "seconds": time.perf_counter() - t0}, indent=2)
    )
    log.info("tokenizer (%d pieces) written to %s in %.1fs", cfg.vocab_size, out, time.perf_counter() - t0)
    return final


ConfigStore.instance().store(name="tokenizer_job_schema", node=TokenizerJob)


@hydra.main(version_base="1.3", config_path="../configs", config_name="tokenizer_train")
def main(cfg) -> None:
    job: TokenizerJob = OmegaConf.to_object(cfg)
    train_tokenizer(job.tokenizer, tokenizer_dir(job.run_dir))


if __name__ == "__main__":
    main()
