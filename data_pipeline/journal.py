"""The build journal: how far an interrupted build got, so that running it again resumes there.

The build commits after every finished shard (and every ``commit_seconds``): open shards and
dedup state are made durable, then ``build_journal.json`` is replaced atomically. A rerun
with the same fingerprint (config, tokenizer, input files) reopens the shards at the recorded
lengths, reloads the dedup state, skips the records already consumed, and goes on; a
different fingerprint starts over.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kfm.data_pipeline.config import DataConfig
from kfm.data_pipeline.reader import source_specs
from kfm.data_pipeline.shards import FORMAT_VERSION
from kfm.files import write_atomically

JOURNAL = "build_journal.json"
STATE_DIR = ".build"
IRRELEVANT = ("num_workers", "commit_seconds")
"""Config fields that do not change the shards."""


def fingerprint(cfg: DataConfig, tokenizer_sha256: str) -> str:
    """Hash of what the shards depend on: the config, the tokenizer and each input file's size and
    modification time (``hf:`` datasets by name only)."""
    config = {k: v for k, v in asdict(cfg).items() if k not in IRRELEVANT}
    inputs = []
    for source in cfg.sources:
        for spec in source_specs(source):
            path = Path(spec).expanduser()
            st = path.stat() if path.is_file() else None
            inputs.append([spec, st.st_size if st else None, st.st_mtime_ns if st else None])
    blob = json.dumps([FORMAT_VERSION, config, tokenizer_sha256, inputs], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class Journal:
    fingerprint: str
    source_index: int = 0
    """The source being built; those before it are done."""
    records_done: int = 0
    """Records of that source consumed (their results are in the shards and dedup state)."""
    writers: dict = field(default_factory=dict)
    """Split → ``ShardWriter.state()`` of the source being built."""
    done_shards: list = field(default_factory=list)
    """Shards of the sources that are done."""
    counts: dict = field(default_factory=dict)
    """Per source, what cleaning and dedup did so far."""
    dedup_counts: tuple = (0, 0)
    """Exact keys and near signatures in the dedup state."""
    seconds: float = 0.0
    """Build time spent so far."""

    def save(self, out: Path) -> None:
        write_atomically(out / JOURNAL, json.dumps(asdict(self)))

    @classmethod
    def load(cls, out: Path) -> Journal | None:
        path = out / JOURNAL
        if not path.is_file():
            return None
        raw = json.loads(path.read_text())
        raw["dedup_counts"] = tuple(raw["dedup_counts"])
        return cls(**raw)
