"""Verify that an exported model is what its provenance chain says it is.

    python -m kfm.train.cli.verify hf_dir=runs/demo/hf run_dir=runs/demo [public_key=keys/team.pub.pem] [check_shards=true]

Checks, each failure named in the report:

1. every record of the export's chain is intact (its id is the hash of its content) and present in the run's
   ledger, and each names its parent, unbroken, back to an origin;
2. signatures, when present (and, with ``public_key``, that every record is signed by that key);
3. the exported weights (read from the safetensors files) hash to the export record's digest, and that
   digest is the parent checkpoint's (float32 exports; a bf16 export is re-cast from the checkpoint when
   it is still on disk); a resume or rollback holds exactly its parent's weights; every other file a loader
   reads (config, generation config, tokenizer files, chat template) hashes to the export record's value,
   and no unrecorded one was added;
4. the origin: kfm's own init is recomputed from the recorded seed and model config and its digest
   compared; an imported Hugging Face model, depth up-scaling or a checkpoint without a record make the
   model "not from scratch";
5. the data: the samples add up along the chain (each checkpoint consumed its parent's count plus the
   samples it records, so a chain relinked to skip a checkpoint fails even unsigned); each manifest the run
   read is found (the recorded path, else relative to the run directory, else ``data_dir=``; a manifest not
   found fails unless ``allow_missing_data=true``, which the report names) and still hashes to the recorded
   value (else the shards that changed are named), optionally every shard file too; the exported tokenizer is
   the shards' tokenizer.

Exit status 0 when verified, 1 when a check failed. The report (text and JSON) is written to
``<hf_dir>/provenance/`` and into the model card.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from kfm.model import ModelConfig, Transformer
from kfm.train.hf.load import hf_weight_tensors, read_hf_config
from kfm.train.provenance.digests import WeightsDigest, digest_tensors, exported_groups, init_digest
from kfm.train.provenance.ledger import (
    CHAIN,
    ORIGIN_KINDS,
    PROVENANCE_DIR,
    Ledger,
    ProvenanceError,
    canonical,
    describe,
    export_file_hashes,
    parent_of,
    read_jsonl,
    read_weights_digest,
    record_id,
)
from kfm.train.provenance.report import Report, update_model_card
from kfm.train.provenance.signing import load_public_key, signature_valid
from kfm.train.provenance.verify_data import check_accounting, check_data


def _check_envelopes(chain: list[dict], source: Path, report: Report) -> bool:
    """Every envelope's id is its content's hash; False if one is not."""
    ok = True
    for env in chain:
        actual = record_id(env["record"])
        if actual != env["id"]:
            report.fail(f"edited record: {describe(env['record'])} in {source} is filed as {env['id'][:16]}... but "
                        f"its content hashes to {actual[:16]}...: it was changed after it was written")
            ok = False
    return ok


def walk_chain(hf_dir: Path, run_dir: Path, report: Report) -> list[dict]:
    """The chain from the origin to the export, checked link by link against the run's ledger."""
    chain_file = hf_dir / PROVENANCE_DIR / CHAIN
    if not chain_file.is_file():
        report.fail(f"{chain_file} not found: the model was exported without a provenance chain (trained with "
                    "provenance.enabled=false, or exported by another tool)")
        return []
    exported = read_jsonl(chain_file)
    if not exported or exported[-1]["record"].get("kind") != "export":
        report.fail(f"{chain_file}: the last record is not an export record")
        return []
    if not _check_envelopes(exported, chain_file, report):
        return []
    ledger = Ledger(run_dir)
    try:
        entries = ledger.envelopes()
    except ProvenanceError as err:
        report.fail(str(err))
        return []
    ledger_ids = {env["id"]: env for env in entries}
    copy_ids = {env["id"]: env for env in exported}
    head = exported[-1]
    if head["id"] not in ledger_ids:
        report.fail(f"the export record {head['id'][:16]}... is not in the run ledger {ledger.path}: the model was "
                    "exported from another run (pass its run_dir=), or the record was rewritten")
        return []
    walked = [head]
    while walked[-1]["record"].get("parent"):
        child = walked[-1]
        parent_id = child["record"]["parent"]
        in_ledger, in_copy = ledger_ids.get(parent_id), copy_ids.get(parent_id)
        if in_ledger is None:
            where = "the export's chain has it" if in_copy else "neither has it"
            report.fail(f"missing link: {describe(child['record'])} names its parent {parent_id[:16]}..., which is "
                        f"not in the run ledger {ledger.path} ({where}): a record was removed")
            return []
        if in_copy is None:
            report.fail(f"missing link: {describe(child['record'])} names its parent {parent_id[:16]}..., which is "
                        f"not in the export's chain {chain_file}: a record was removed")
            return []
        if not _check_envelopes([in_ledger], ledger.path, report):
            return []
        walked.append(in_ledger)
    chain = walked[::-1]
    if len(chain) != len(exported):
        report.fail(f"{chain_file} holds {len(exported)} records but the chain from the export back to its origin "
                    f"has {len(chain)}: records were added that do not belong to it")
    if chain[0]["record"].get("kind") not in ORIGIN_KINDS:
        report.fail(f"the chain starts at {describe(chain[0]['record'])}, which is not an origin "
                    f"({', '.join(ORIGIN_KINDS)})")
    return chain


def check_signatures(chain: list[dict], public_key: str, report: Report) -> None:
    trusted = load_public_key(public_key) if public_key else None
    signers = set()
    for env in chain:
        sig = env.get("signature")
        what = describe(env["record"])
        if sig is None:
            if trusted:
                report.fail(f"unsigned record: {what} carries no signature, and every record must be signed by "
                            f"{public_key}")
            continue
        if not signature_valid(sig, canonical(env["record"])):
            report.fail(f"bad signature: {what}'s signature does not match its content (the record was rewritten)")
        elif trusted and sig.get("public_key") != trusted:
            report.fail(f"foreign signature: {what} is signed by key {sig.get('public_key', '')[:16]}..., not by "
                        f"{public_key}")
        signers.add(sig.get("public_key", ""))
    unsigned = sum("signature" not in env for env in chain)
    report.signing = {"signers": sorted(signers), "unsigned_records": unsigned, "trusted_key": trusted}
    if signers and unsigned and not trusted:
        report.warn(f"{unsigned} of {len(chain)} records are unsigned")


def check_origin(chain: list[dict], report: Report) -> None:
    root = chain[0]["record"]
    kinds = [env["record"]["kind"] for env in chain]
    report.from_scratch = root["kind"] == "init" and not {"import", "upscale"} & set(kinds)
    if root["kind"] == "init":
        with torch.device("meta"):
            model = Transformer(ModelConfig.from_dict(root["model"]))
        recomputed = init_digest(model, root["seed"]).sha256
        if recomputed != root["weights"]["sha256"]:
            report.fail(f"initial weights: kfm's init with the recorded seed {root['seed']} and model config gives "
                        f"sha256 {recomputed[:16]}..., the init record says {root['weights']['sha256'][:16]}...")
            report.from_scratch = False
        report.origin = {"kind": "init", "seed": root["seed"], "weights_sha256": recomputed,
                         "recomputed": recomputed == root["weights"]["sha256"]}
    elif root["kind"] == "import":
        report.origin = {"kind": "import", "source": root["source"], "architecture": root.get("architecture"),
                         "weights_sha256": root["weights"]["sha256"], "hf_config_sha256": root.get("hf_config_sha256")}
    else:
        report.origin = {"kind": root["kind"], "source": root.get("source"), "weights_sha256": root["weights"]["sha256"],
                         "unrecorded": root.get("unrecorded", False)}
        report.from_scratch = False
    for env in chain[1:]:
        rec = env["record"]
        if rec["kind"] == "upscale":
            report.notes.append(f"depth up-scaled with layers {rec['layers']} (weights {rec['weights']['sha256'][:16]}...)")
        if rec["kind"] == "resume":
            report.notes.append(f"continued from {'another run' if rec.get('foreign') else 'a'} checkpoint {rec['source']}")
        if rec["kind"] == "cast":
            report.notes.append(f"the initial weights were rounded to {rec['dtype']} before training (DeepSpeed "
                                "bf16 keeps fp32 master copies of the rounded weights)")
        if rec["kind"] == "rollback":
            report.notes.append(f"rolled back at step {rec['step']} to {describe(parent_of(chain, env)['record'])} "
                                f"({rec['discarded_samples']} samples discarded)")


def check_links(chain: list[dict], report: Report) -> None:
    """Records that must hold exactly their parent's weights (resume, rollback) do."""
    for env in chain[1:]:
        rec = env["record"]
        parent = parent_of(chain, env)["record"]
        if rec["kind"] == "cast" and parent["kind"] == "init":
            with torch.device("meta"):
                model = Transformer(ModelConfig.from_dict(parent["model"]))
            recomputed = init_digest(model, parent["seed"], getattr(torch, rec["dtype"])).sha256
            if recomputed != rec["weights"]["sha256"]:
                report.fail(f"{describe(rec)}: the initial weights rounded to {rec['dtype']} hash to "
                            f"{recomputed[:16]}..., the record says {rec['weights']['sha256'][:16]}...")
        if rec["kind"] in ("resume", "rollback"):
            if rec["weights"]["sha256"] != parent["weights"]["sha256"]:
                report.fail(f"{describe(rec)} holds weights {rec['weights']['sha256'][:16]}..., not those of "
                            f"{describe(parent)} ({parent['weights']['sha256'][:16]}...) it continued from")


def check_export_weights(hf_dir: Path, run_dir: Path, chain: list[dict], report: Report) -> None:
    rec = chain[-1]["record"]
    parent = chain[-2]["record"] if len(chain) > 1 else {}
    digest = digest_tensors(hf_weight_tensors(hf_dir, read_hf_config(hf_dir)))
    report.export = {"weights_sha256": digest.sha256, "dtype": rec.get("dtype"), "step": rec.get("step")}
    if digest.sha256 != rec["weights"]["sha256"]:
        recorded = read_weights_digest(hf_dir)
        changed = digest.differences(WeightsDigest.from_json(recorded)) if recorded else []
        named = f": tensors that differ: {', '.join(changed[:8])}" + (" ..." if len(changed) > 8 else "") if changed else ""
        report.fail(f"exported weights changed: {hf_dir} hashes to {digest.sha256[:16]}..., the export record says "
                    f"{rec['weights']['sha256'][:16]}...{named}")
    if parent.get("kind") != "checkpoint":
        report.fail(f"the export's parent is {describe(parent) if parent else 'missing'}, not a checkpoint")
        return
    if rec.get("dtype") == "float32" and not rec.get("drop_mtp"):
        if rec["weights"]["sha256"] != parent["weights"]["sha256"]:
            report.fail(f"the export record's weights ({rec['weights']['sha256'][:16]}...) are not those of "
                        f"{describe(parent)} ({parent['weights']['sha256'][:16]}...)")
        return
    ckpt = run_dir / "checkpoints" / f"step_{parent['step']:07d}"
    carried = read_jsonl(ckpt / PROVENANCE_DIR / CHAIN) if (ckpt / PROVENANCE_DIR / CHAIN).is_file() else []
    if not carried or carried[-1]["id"] != rec["parent"]:
        report.warn(f"the {rec.get('dtype')} export was not re-checked: {describe(parent)} is no longer in {ckpt.parent}")
        return
    from kfm.train.checkpoint.reader import load_model_weights

    model = Transformer(ModelConfig.from_dict(parent["config"]["model"]))
    load_model_weights(ckpt, model)
    dtype = getattr(torch, rec["dtype"])
    cast = digest_tensors((names, p.detach().to(dtype)) for names, p in exported_groups(model, rec.get("drop_mtp")))
    if cast.sha256 != rec["weights"]["sha256"]:
        report.fail(f"the export's weights are not {describe(parent)}'s cast to {rec['dtype']}"
                    + (" without its multi-token prediction modules" if rec.get("drop_mtp") else ""))


def check_export_files(hf_dir: Path, chain: list[dict], report: Report) -> None:
    """Every non-weight file of the export that a loader reads is the one the export record hashed."""
    recorded = chain[-1]["record"].get("files")
    if recorded is None:
        report.fail("the export record hashes no config or tokenizer files (exported by an older kfm): export "
                    "the checkpoint again")
        return
    now_files = export_file_hashes(hf_dir)
    for name in sorted(set(recorded) | set(now_files)):
        if name not in now_files:
            report.fail(f"export file missing: {hf_dir / name} is in the export record but not on disk")
        elif name not in recorded:
            report.fail(f"export file added after export: {hf_dir / name} is not in the export record (a loader "
                        "may read it)")
        elif now_files[name] != recorded[name]:
            report.fail(f"export file changed after export: {hf_dir / name} hashes to {now_files[name][:16]}..., "
                        f"the export record says {recorded[name][:16]}...")


def verify(hf_dir: str | Path, run_dir: str | Path, public_key: str = "", data_dir: str = "",
           check_shards: bool = False, allow_missing_data: bool = False) -> Report:
    hf_dir, run_dir = Path(hf_dir), Path(run_dir)
    report = Report(hf_dir=str(hf_dir), run_dir=str(run_dir))
    try:
        chain = walk_chain(hf_dir, run_dir, report)
    except ProvenanceError as err:
        report.fail(str(err))
        chain = []
    if chain:
        report.chain = chain
        check_signatures(chain, public_key, report)
        check_origin(chain, report)
        check_links(chain, report)
        check_export_weights(hf_dir, run_dir, chain, report)
        check_export_files(hf_dir, chain, report)
        check_accounting(chain, report)
        check_data(hf_dir, run_dir, chain, data_dir, check_shards, report, allow_missing_data)
    report.finish()
    return report


def write_report(report: Report, hf_dir: Path) -> None:
    out = hf_dir / PROVENANCE_DIR
    (out / "report.txt").write_text(report.to_text())
    (out / "report.json").write_text(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    update_model_card(hf_dir / "README.md", report)
