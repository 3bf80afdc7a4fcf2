"""Small file-system helpers every package shares (kfm.model uses none: it touches no files)."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` so that a reader (or a crash) sees the old file or the new one, never half:
    written to ``<path>.part``, flushed to disk, then renamed over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    with part.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, path)
    return path
