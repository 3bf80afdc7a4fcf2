"""One document's way from raw text to tokens, shared by the one-machine build and the staged build.

``DocumentProcessor`` cleans and filters a batch of one source's records, decides each kept document's
split, tokenizes the batch and computes the dedup keys: what both builds do before deduplication.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kfm.data_pipeline.clean import clean_document
from kfm.data_pipeline.config import DataConfig
from kfm.data_pipeline.dedup import dedup_key
from kfm.data_pipeline.near_dedup import signature
from kfm.data_pipeline.text import normalize
from kfm.tokenizer.fast_encode import batch_encoder
from kfm.tokenizer.hf import load_sentencepiece
from kfm.tokenizer.sampling import is_heldout

COUNTED_RECORDS = ("docs_in", "removed_empty", "removed_bad_record")
"""The counters that together count every record read."""


@dataclass
class Document:
    split: str
    """``train`` or ``val`` (decided on the raw NFC text by the tokenizer's held-out rule)."""
    key: bytes
    """Exact-duplicate key (``dedup.dedup_key``)."""
    signature: np.ndarray | None
    """MinHash values, or None when near-dedup is off or the text is shorter than one shingle."""
    tokens: np.ndarray
    """``[bos] + ids + [eos]``, int32."""
    index: int
    """Its record's place in the batch."""


class DocumentProcessor:
    """``process(texts, lang, counts)``: the kept documents of a batch of records, in order."""

    def __init__(self, cfg: DataConfig, tokenizer_model: str | Path) -> None:
        sp = load_sentencepiece(tokenizer_model)
        self.cfg, self.encoder = cfg, batch_encoder(str(tokenizer_model))
        self.vocab_size = sp.get_piece_size()
        self.bos = np.array([sp.bos_id()], dtype=np.int32)
        self.eos = np.array([sp.eos_id()], dtype=np.int32)

    def process(self, texts: list[str | None], lang: str, counts: Counter) -> list[Document]:
        """Clean, filter and tokenize; a ``None`` record is a skipped bad one. ``counts`` gets what was done."""
        cfg = self.cfg
        kept = []
        for i, raw in enumerate(texts):
            if raw is None:
                counts["removed_bad_record"] += 1
                continue
            if not raw.strip():
                counts["removed_empty"] += 1
                continue
            counts["docs_in"] += 1
            counts["bytes_in"] += len(raw.encode())
            split = "val" if is_heldout(raw, cfg.val_fraction) else "train"
            text = clean_document(raw, lang, cfg.clean, counts) if cfg.clean.enabled else normalize(raw)
            if text is not None:
                kept.append((split, text, i))
        ids = self.encoder.encode_batch([t for _, t, _ in kept])
        near = cfg.clean.enabled and cfg.clean.dedup_near
        return [
            Document(split, dedup_key(t),
                     signature(t, cfg.clean.near_num_perm, cfg.clean.near_shingle_chars) if near else None,
                     np.concatenate([self.bos, x, self.eos]), i)
            for (split, t, i), x in zip(kept, ids)
        ]
