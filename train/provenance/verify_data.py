"""The data half of ``kfm.train.provenance.verify``: the samples add up along the chain, and the data the run read is
still what it read (manifests, optionally every shard, the tokenizer)."""

from __future__ import annotations

import json
from pathlib import Path

from kfm.data_pipeline.shards import MANIFEST, file_sha256, index_path
from kfm.train.provenance.ledger import MANIFESTS, PROVENANCE_DIR, describe, parent_of
from kfm.train.provenance.report import Report


def _consumed(chain: list[dict], env: dict) -> int:
    """Training samples consumed at a record: its own count, else its parent's, 0 at the origin."""
    while "consumed" not in env["record"]:
        if env["record"].get("parent") is None:
            return 0
        env = parent_of(chain, env)
    return env["record"]["consumed"]


def check_accounting(chain: list[dict], report: Report) -> None:
    """Each checkpoint consumed its parent's samples plus those it records reading; a rollback its parent's
    plus those it discarded; a resume exactly its parent's."""
    for env in chain[1:]:
        rec = env["record"]
        if "consumed" not in rec:
            continue
        before = _consumed(chain, parent_of(chain, env))
        if rec["kind"] == "checkpoint":
            expected, why = before + sum(seg["samples"] for seg in rec.get("data", [])), "plus the samples it read"
        elif rec["kind"] == "rollback":
            expected, why = before + rec.get("discarded_samples", 0), "plus the samples it discarded"
        elif rec["kind"] == "resume":
            expected, why = before, ""
        else:
            continue
        if rec["consumed"] != expected:
            report.fail(f"data accounting: {describe(rec)} has consumed {rec['consumed']} samples, but its parent "
                        f"{describe(parent_of(chain, env)['record'])} had {before}{' ' + why if why else ''}: "
                        f"{expected}. A record was removed or relinked")


def _manifest_candidates(entry: dict, run_dir: Path, data_dir: str) -> list[Path]:
    if data_dir:
        return [Path(data_dir) / MANIFEST]
    found = [Path(entry["data_dir"]) / MANIFEST]
    if entry.get("data_dir_from_run"):
        found.append(run_dir / entry["data_dir_from_run"] / MANIFEST)
    if not Path(entry["data_dir"]).is_absolute():  # recorded by an older kfm, relative to where it ran
        found.append(run_dir / entry["data_dir"] / MANIFEST)
        found.append(run_dir.parent / Path(entry["data_dir"]).name / MANIFEST)
    return found


def check_data(hf_dir: Path, run_dir: Path, chain: list[dict], data_dir: str, check_shards: bool,
               report: Report, allow_missing_data: bool = False) -> None:
    """Sum the tokens each manifest supplied along the chain, and check each manifest is unchanged."""
    fed: dict[str, dict] = {}
    for env in chain:
        for seg in env["record"].get("data", []):
            entry = fed.setdefault(seg["manifest_sha256"], {
                "manifest_sha256": seg["manifest_sha256"], "data_dir": seg["data_dir"],
                "data_dir_from_run": seg.get("data_dir_from_run"),
                "tokenizer_sha256": seg["tokenizer_sha256"], "tokens": {}, "samples": 0, "checked": False})
            entry["samples"] += seg["samples"]
            for source, n in seg["tokens"].items():
                entry["tokens"][source] = entry["tokens"].get(source, 0) + n
    report.data = list(fed.values())
    tokenizer = hf_dir / "tokenizer.model"
    for entry in report.data:
        entry["total_tokens"] = sum(entry["tokens"].values())
        copy = run_dir / PROVENANCE_DIR / MANIFESTS / f"{entry['manifest_sha256']}.json"
        if copy.is_file() and file_sha256(copy) != entry["manifest_sha256"]:
            report.fail(f"the run's copy of data manifest {entry['manifest_sha256'][:16]}... ({copy}) was edited")
        candidates = _manifest_candidates(entry, run_dir, data_dir)
        manifest = next((m for m in candidates if m.is_file()), None)
        if manifest is None:
            looked = ", ".join(str(m) for m in dict.fromkeys(candidates))
            if allow_missing_data:
                report.notes.append(f"allow_missing_data: data manifest {entry['manifest_sha256'][:16]}... was not "
                                    f"found ({looked}) and the data were not checked")
            else:
                report.fail(f"data manifest {entry['manifest_sha256'][:16]}... not found ({looked}): pass "
                            "data_dir=<where the shards are>, or allow_missing_data=true to verify without the data")
            continue
        where = manifest.parent
        entry["manifest_path"] = str(manifest)
        now_sha = file_sha256(manifest)
        if now_sha != entry["manifest_sha256"]:
            report.fail(f"data manifest changed after training: {manifest} hashes to {now_sha[:16]}..., the run read "
                        f"{entry['manifest_sha256'][:16]}...{_manifest_diff(copy, manifest)}")
            continue
        entry["checked"] = True
        if check_shards:
            for shard in json.loads(manifest.read_text())["shards"]:
                for rel, sha in ((shard["file"], shard["sha256"]), (index_path(shard["file"]), shard["index_sha256"])):
                    path = where / rel
                    if not path.is_file() or file_sha256(path) != sha:
                        report.fail(f"data shard changed after training: {path} does not match its manifest entry")
    if tokenizer.is_file() and report.data:
        sha = file_sha256(tokenizer)
        trained = {e["tokenizer_sha256"] for e in report.data}
        if sha not in trained:
            report.fail(f"{tokenizer} (sha256 {sha[:16]}...) is not the tokenizer the training data was tokenized "
                        f"with ({', '.join(s[:16] + '...' for s in sorted(trained))})")


def _manifest_diff(copy: Path, current: Path) -> str:
    """What differs between the manifest the run read (its copy) and the current one, in a few words."""
    if not copy.is_file():
        return ""
    old, new = json.loads(copy.read_text()), json.loads(current.read_text())
    old_shards = {s["file"]: s for s in old.get("shards", [])}
    new_shards = {s["file"]: s for s in new.get("shards", [])}
    changed = sorted(f for f in set(old_shards) | set(new_shards) if old_shards.get(f) != new_shards.get(f))
    fields = sorted(k for k in set(old) | set(new) if k != "shards" and old.get(k) != new.get(k))
    parts = []
    if changed:
        parts.append("shards that differ: " + ", ".join(changed[:6]) + (" ..." if len(changed) > 6 else ""))
    if fields:
        parts.append("fields that differ: " + ", ".join(fields))
    return "; " + "; ".join(parts) if parts else ""
