"""What the validation figures are made of: each source's held-out text, and the headline over sources.

``val_loss`` was once the first global batches of the held-out split in manifest order, which is the first
source's text alone (the demo's Korean); it is now defined over every source by its held-out size
(``held_out_aggregate``), with each source's own figure beside it.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from kfm.data_pipeline.loader import TokenWindows
from kfm.data_pipeline.shards import Manifest

log = logging.getLogger("kfm.train")


def held_out_sources(data_dir: Path, seq_len: int, world: int, verify: bool):
    """({source: its held-out windows}, {source: its held-out tokens}, manifest) for every source with at least
    one held-out window a rank; the others are named in a warning and left out of the validation figures."""
    manifest = Manifest.load(data_dir)
    sets, tokens = {}, {}
    for source in sorted({s.source for s in manifest.split_shards("val")}):
        held = sum(s.num_tokens for s in manifest.split_shards("val") if s.source == source)
        try:
            windows = TokenWindows(data_dir, "val", seq_len, source, manifest, verify)
        except ValueError:  # fewer tokens than one window
            windows = None
        if windows is None or len(windows) < world:
            log.warning("held-out text of source %r (%d tokens) is less than one %d-token window a rank: it is left "
                        "out of val_loss; raise data.val_fraction to measure it", source, held, seq_len + 1)
            continue
        sets[source], tokens[source] = windows, held
    if not sets:
        raise ValueError(f"{data_dir}: no source has a held-out window a rank ({world} ranks, loader.seq_len={seq_len}): "
                         "raise data.val_fraction (when building the shards) or lower loader.seq_len")
    return sets, tokens, manifest


def held_out_aggregate(sums: dict[str, list[float]], held_tokens: dict[str, int]) -> dict[str, float]:
    """``val_loss`` (and ``val_bpb``) over sources from each one's summed (nats, tokens, bytes): the sources'
    nats per token weighted by their held-out tokens ``w_s``, and bits per byte as that over the bytes per token
    weighted the same way: ``sum_s w_s L_s / ln 2 / sum_s w_s B_s``, i.e. the held-out split's expected bits
    over its expected bytes."""
    total = sum(held_tokens[s] for s in sums)
    loss = sum(held_tokens[s] / total * nats / tokens for s, (nats, tokens, _) in sums.items())
    out = {"val_loss": loss}
    if all(nbytes > 0 for _, _, nbytes in sums.values()):
        bytes_per_token = sum(held_tokens[s] / total * nbytes / tokens for s, (_, tokens, nbytes) in sums.items())
        out["val_bpb"] = loss / math.log(2) / bytes_per_token
    return out
