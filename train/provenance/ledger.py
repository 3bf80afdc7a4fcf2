"""Provenance records: a hash-chained ledger of where a model's weights came from.

Every record is a JSON object; its id is the SHA-256 of its canonical form (keys sorted, no
whitespace, UTF-8). A record names its ``parent`` by id, so records chain like a ledger from the
weights' origin to the exported model::

    init (seed, config, weights digest)            kfm's own random initialisation
    | import (HF dir, its config hash, weights)     or weights that came from elsewhere,
    | upscale (layer ranges, weights)               depth up-scaled
    | resume (unrecorded checkpoint, weights)       or a checkpoint without a record
    checkpoint (step, weights, data read since the parent, config, code)  ... one per checkpoint
    rollback (weights back to a checkpoint)        when spikes forced one
    export (dtype, weights as exported)

A record travels in an envelope ``{"id", "record", "signature"?}``; the signature (optional,
Ed25519, ``kfm.train.provenance.signing``) covers the same canonical bytes as the id. Files:

- ``<run_dir>/provenance/ledger.jsonl``: every envelope the run wrote, appended with fsync;
- ``<run_dir>/provenance/manifests/<sha256>.json``: a copy of each data manifest the run read;
- ``<checkpoint>/provenance/chain.jsonl`` and ``<hf export>/provenance/chain.jsonl``: the chain from
  the origin to that checkpoint or export, with ``weights_digest.json`` (per-tensor digests).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from kfm.data_pipeline.shards import file_sha256
from kfm.files import write_atomically

PROVENANCE_DIR = "provenance"
LEDGER = "ledger.jsonl"
CHAIN = "chain.jsonl"
WEIGHTS_DIGEST = "weights_digest.json"
MANIFESTS = "manifests"
ORIGIN_KINDS = ("init", "import", "resume")
"""Kinds that may start a chain (no parent)."""
SOURCE_PACKAGES = ("model", "train", "data_pipeline", "tokenizer")
_REPO = Path(__file__).resolve().parent.parent


class ProvenanceError(ValueError):
    """A chain that is broken, edited or does not match the weights it describes."""


def canonical(record: dict) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_id(record: dict) -> str:
    return hashlib.sha256(canonical(record)).hexdigest()


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def envelope(record: dict, signer=None) -> dict:
    """The record with its id (and signature when a ``kfm.train.provenance.signing.Signer`` is given)."""
    env = {"id": record_id(record), "record": record}
    if signer is not None:
        env["signature"] = signer.sign(canonical(record))
    return env


def describe(record: dict) -> str:
    """A short human name for a record: ``checkpoint step 20``, ``init (seed 0)``, ..."""
    kind = record.get("kind", "?")
    if "step" in record:
        return f"{kind} step {record['step']}"
    if kind == "init":
        return f"init (seed {record.get('seed')})"
    return kind


def code_version() -> dict:
    """The code that is running: the SHA-256 of kfm's Python sources and, in a git checkout, the commit
    and whether the tree had uncommitted changes."""
    h = hashlib.sha256()
    for package in SOURCE_PACKAGES:
        for path in sorted((_REPO / package).rglob("*.py")):
            h.update(str(path.relative_to(_REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    out = {"source_sha256": h.hexdigest()}
    try:
        commit = subprocess.run(["git", "-C", str(_REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode == 0:
            status = subprocess.run(["git", "-C", str(_REPO), "status", "--porcelain", "--", *SOURCE_PACKAGES],
                                    capture_output=True, text=True, timeout=10)
            out.update(git_commit=commit.stdout.strip(), git_dirty=bool(status.stdout.strip()))
    except (OSError, subprocess.TimeoutExpired):
        pass
    return out


def _append_line(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict]:
    """Envelopes of a ledger or chain file; a line that is not JSON is named."""
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            env = json.loads(line)
        except json.JSONDecodeError as err:
            raise ProvenanceError(f"{path}, line {n}: not a JSON record ({err.msg}); the file was damaged or edited")
        if not isinstance(env, dict) or "id" not in env or "record" not in env:
            raise ProvenanceError(f"{path}, line {n}: not a provenance envelope (needs 'id' and 'record')")
        out.append(env)
    return out


class Ledger:
    """The run's append-only ledger of envelopes."""

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir) / PROVENANCE_DIR
        self.path = self.dir / LEDGER

    def append(self, env: dict) -> None:
        _append_line(self.path, json.dumps(env, ensure_ascii=False))

    def envelopes(self) -> list[dict]:
        if not self.path.is_file():
            raise ProvenanceError(f"{self.path} not found: the run recorded no provenance (provenance.enabled was "
                                  "false, or this is not the run directory the model was trained in)")
        return read_jsonl(self.path)

    def by_id(self) -> dict[str, dict]:
        return {env["id"]: env for env in self.envelopes()}

    def keep_manifest(self, manifest_file: Path, sha256: str) -> Path:
        """A copy of a data manifest the run reads, under its hash (kept once)."""
        copy = self.dir / MANIFESTS / f"{sha256}.json"
        if not copy.is_file():
            copy.parent.mkdir(parents=True, exist_ok=True)
            part = copy.with_name(copy.name + ".part")
            part.write_bytes(manifest_file.read_bytes())
            part.replace(copy)
        return copy


def write_chain(directory: Path, chain: list[dict], digest_json: dict | None = None) -> None:
    """``<directory>/provenance/chain.jsonl`` (origin first) and the per-tensor weight digests."""
    out = directory / PROVENANCE_DIR
    out.mkdir(parents=True, exist_ok=True)
    part = out / (CHAIN + ".part")
    with part.open("w", encoding="utf-8") as f:
        for env in chain:
            f.write(json.dumps(env, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    part.replace(out / CHAIN)
    if digest_json is not None:
        write_atomically(out / WEIGHTS_DIGEST, json.dumps(digest_json, indent=1, ensure_ascii=False))


def read_chain(directory: Path) -> list[dict] | None:
    """The chain carried by a checkpoint or export directory, or None if it carries none."""
    path = directory / PROVENANCE_DIR / CHAIN
    return read_jsonl(path) if path.is_file() else None


def read_weights_digest(directory: Path) -> dict | None:
    path = directory / PROVENANCE_DIR / WEIGHTS_DIGEST
    return json.loads(path.read_text()) if path.is_file() else None


AFTER_EXPORT = ("README.md", "eval_results.json")
"""Files kfm writes into an export after it is recorded, which no loader reads: the model card (rewritten by
``kfm.train.provenance.verify`` and ``kfm.train.cli.evaluate_lm``) and the evaluation results."""


def export_file_hashes(out: Path) -> dict[str, str]:
    """SHA-256 of every file of the export a loader reads besides the weights (which the weights digest covers):
    config, generation config, tokenizer files, special-token maps, chat template, the shard index, any other
    file put there. Not ``AFTER_EXPORT`` or ``provenance/``."""
    files = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if path.is_file() and not _unhashed(rel):
            files[rel] = file_sha256(path)
    return files


def _unhashed(rel: str) -> bool:
    return rel in AFTER_EXPORT or rel.startswith(f"{PROVENANCE_DIR}/") or rel.endswith(".safetensors")


def parent_of(chain: list[dict], env: dict) -> dict:
    """The envelope of ``chain`` that ``env``'s record names as its parent."""
    return next(e for e in chain if e["id"] == env["record"]["parent"])
