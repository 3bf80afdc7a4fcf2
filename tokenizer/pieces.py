"""How many bytes of text each token stands for (for bits-per-byte, which compares across tokenizers)."""

from __future__ import annotations

import numpy as np
import sentencepiece as spm


def piece_byte_lengths(sp: spm.SentencePieceProcessor) -> np.ndarray:
    """UTF-8 bytes of the text behind every id: a byte-fallback piece ``<0xNN>`` is 1 byte, the word
    marker ``▁`` is a space, control and unknown pieces are 0. Summed over a document's ids this is the
    UTF-8 length of its text (plus one where a tokenizer adds a dummy-prefix space; kfm's do not)."""
    lengths = np.zeros(sp.get_piece_size(), dtype=np.int32)
    for i in range(sp.get_piece_size()):
        if sp.is_control(i) or sp.is_unknown(i):
            continue
        lengths[i] = 1 if sp.is_byte(i) else len(sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
    return lengths
