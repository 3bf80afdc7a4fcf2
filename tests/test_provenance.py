"""Provenance: a from-scratch run verifies end to end, an imported or resumed-from-elsewhere model is named as
such, tampering fails naming what broke, and weight digests stream."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from kfm.data_pipeline.loader import MixtureStream
from kfm.model import ModelConfig, Transformer
from kfm.train.checkpoint.reader import load_model_weights
from kfm.train.cli.export_hf import export_checkpoint
from kfm.train.hf.load import hf_weight_tensors, load_hf_checkpoint, read_hf_config
from kfm.train.provenance.digests import digest_tensors, module_tensors, state_dict_tensors
from kfm.train.provenance.ledger import PROVENANCE_DIR, Ledger, ProvenanceError, envelope, read_chain, write_chain
from kfm.train.provenance.signing import Signer, generate_keypair
from kfm.train.provenance.verify import verify
from tests.helpers import build_tiny_shards, make_job, random_hf_model, run_distributed, train_and_report

STEP4, STEP8 = "step_0000004", "step_0000008"


@pytest.fixture(scope="module")
def scratch(tiny_corpus, tiny_tokenizer, tmp_path_factory):
    """A from-scratch run: 8 steps in one process, checkpoints at 4 and 8, exported to ``hf``."""
    root = tmp_path_factory.mktemp("scratch")
    build_tiny_shards(tiny_corpus, tiny_tokenizer, root / "data")
    run_distributed(train_and_report, 1, make_job(root, steps=8))
    export_checkpoint(root / "checkpoints" / STEP8, tiny_tokenizer, root / "hf")
    return root


def copy_run(src, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(src, run)
    return run, run / "hf"


def kinds(report) -> list[str]:
    return [env["record"]["kind"] for env in report.chain]


def test_a_from_scratch_run_is_exported_and_verified_end_to_end(scratch, tiny_tokenizer):
    hf = scratch / "hf"
    report = verify(hf, scratch)
    assert report.verified and report.from_scratch, report.to_text()
    assert kinds(report) == ["init", "checkpoint", "checkpoint", "export"]
    assert report.verdict.startswith("VERIFIED: trained from scratch")
    assert report.origin["recomputed"] and report.origin["seed"] == 0
    # The data: 8 steps x 4 sequences x 32 tokens, split over the sources as the stream drew them.
    (data,) = report.data
    stream = MixtureStream(scratch / "data", 32, None, 0)
    assert data["total_tokens"] == 8 * 4 * 32 and data["checked"]
    assert data["tokens"] == {s: n * 32 for s, n in stream.samples_by_source(0, 32).items()}
    # The exported weights are the step-8 checkpoint's, as read back from the checkpoint in one process.
    model = Transformer(ModelConfig.from_dict(report.chain[1]["record"]["config"]["model"]))
    load_model_weights(scratch / "checkpoints" / STEP8, model)
    digest = digest_tensors(module_tensors(model)).sha256
    assert report.export["weights_sha256"] == digest == report.chain[2]["record"]["weights"]["sha256"]
    # The report went into the model card and next to the weights; the command line agrees.
    card = (hf / "README.md").read_text()
    assert "## Provenance" in card and "VERIFIED: trained from scratch" in card
    assert json.loads((hf / PROVENANCE_DIR / "report.json").read_text())["from_scratch"] is True
    cli = subprocess.run([sys.executable, "-m", "kfm.train.cli.verify", f"hf_dir={hf}", f"run_dir={scratch}"],
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert "VERIFIED: trained from scratch" in cli.stdout and "ko " in cli.stdout


def test_the_data_resolves_from_the_run_directory_or_is_waived_by_name(scratch, tmp_path):
    """``data_dir`` is recorded absolute and relative to the run: a copied run finds its data with the
    original gone; with no data at all the verdict fails unless ``allow_missing_data`` waives it, in the report."""
    run, hf = copy_run(scratch, tmp_path)
    moved = scratch / "data.moved"
    (scratch / "data").rename(moved)
    try:
        report = verify(hf, run)
        assert report.verified, report.to_text()
        assert report.data[0]["checked"] and report.data[0]["manifest_path"] == str(run / "data" / "manifest.json")
        shutil.rmtree(run / "data")
        failed = verify(hf, run)
        assert not failed.verified and "not found" in "\n".join(failed.failures)
        waived = verify(hf, run, allow_missing_data=True)
        assert waived.verified and any(n.startswith("allow_missing_data: data manifest") for n in waived.notes)
        assert "allow_missing_data" in waived.to_text()
    finally:
        moved.rename(scratch / "data")


def test_files_kfm_writes_after_the_export_do_not_break_the_verdict(scratch, tmp_path):
    """``kfm.train.cli.evaluate_lm`` writes eval_results.json and the model card after the export; no loader reads them."""
    run, hf = copy_run(scratch, tmp_path)
    (hf / "eval_results.json").write_text(json.dumps({"results": {"kobest_boolq": {"acc": 0.5}}}))
    (hf / "README.md").write_text((hf / "README.md").read_text() + "\n## Evaluation results\n")
    report = verify(hf, run)
    assert report.verified, report.to_text()


# ----- tampering -----
def rewrite_chain(run, hf, edit, signer=None, keep_signatures=False) -> None:
    """Edit records of the export's chain and re-link it consistently (ids recomputed, parents updated),
    in the export and in the run's ledger, as someone rewriting history would."""
    chain = read_chain(hf)
    records = [env["record"] for env in chain]
    edit(records)
    new, parent = [], None
    for old_env, rec in zip(chain, records):
        rec["parent"] = parent
        new.append(envelope(rec, signer))
        if keep_signatures and "signature" in old_env:
            new[-1]["signature"] = old_env["signature"]
        parent = new[-1]["id"]
    digest = json.loads((hf / PROVENANCE_DIR / "weights_digest.json").read_text())
    write_chain(hf, new, digest)
    old = {env["id"] for env in chain}
    kept = [line for line in Ledger(run).path.read_text().splitlines() if json.loads(line)["id"] not in old]
    Ledger(run).path.write_text("".join(line + "\n" for line in kept + [json.dumps(env) for env in new]))


def edit_ledger(run, step, change) -> None:
    """Apply ``change(record)`` to the ledger's checkpoint record of ``step`` (``None``: delete it), in place."""
    path = Ledger(run).path
    lines = []
    for line in path.read_text().splitlines():
        env = json.loads(line)
        if env["record"]["kind"] == "checkpoint" and env["record"]["step"] == step:
            if change is None:
                continue
            change(env["record"])
        lines.append(json.dumps(env))
    path.write_text("\n".join(lines) + "\n")


def change_a_weight(run, hf):
    sd = load_file(str(hf / "model.safetensors"))
    sd["model.layers.0.self_attn.q_proj.weight"][0, 0] += 1e-3
    save_file(sd, str(hf / "model.safetensors"), metadata={"format": "pt"})


def swap_weights_and_rewrite_the_export_record(run, hf):
    sd = load_file(str(hf / "model.safetensors"))
    save_file({k: v + 0.01 * torch.randn_like(v) for k, v in sd.items()}, str(hf / "model.safetensors"),
              metadata={"format": "pt"})
    digest = digest_tensors(hf_weight_tensors(hf, read_hf_config(hf))).summary()
    rewrite_chain(run, hf, lambda recs: recs[-1].update(weights=digest))


def change_a_manifest(run, hf):
    path = run / "data" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["shards"][0]["num_tokens"] += 1
    path.write_text(json.dumps(manifest, indent=2))


def change_a_shard(run, hf):
    shard = sorted((run / "data" / "train").glob("ko_*.bin"))[0]
    data = bytearray(shard.read_bytes())
    data[10] ^= 1
    shard.write_bytes(bytes(data))


def edit_config_theta(run, hf):
    path = hf / "config.json"
    cfg = json.loads(path.read_text())
    cfg["rope_theta"] = cfg["rope_parameters"]["rope_theta"] = 1234.0  # changes every logit
    path.write_text(json.dumps(cfg, indent=2))


def edit_tokenizer_json(run, hf):
    path = hf / "tokenizer.json"
    tok = json.loads(path.read_text())
    vocab = tok["model"]["vocab"]
    first = next(iter(vocab)) if isinstance(vocab, dict) else 0
    if isinstance(vocab, dict):
        vocab[first + "x"] = vocab.pop(first)
    else:
        vocab[0][0] += "x"
    path.write_text(json.dumps(tok))


TAMPERING = {
    "config.json edited": (edit_config_theta, ["export file changed after export", "config.json"]),
    "tokenizer.json edited": (edit_tokenizer_json, ["export file changed after export", "tokenizer.json"]),
    "chat template added": (lambda run, hf: (hf / "chat_template.jinja").write_text("{{ messages }}"),
                            ["export file added after export", "chat_template.jinja"]),
    "a checkpoint skipped, chain relinked unsigned": (lambda run, hf: rewrite_chain(run, hf, lambda recs: recs.pop(1)),
                                                      ["data accounting: checkpoint step 8 has consumed 32 samples, but "
                                                       "its parent init (seed 0) had 0 plus the samples it read: 16"]),
    "data manifest gone": (lambda run, hf: (run / "data" / "manifest.json").unlink(),
                           ["data manifest", "not found", "allow_missing_data=true"]),
    "weight in the export": (change_a_weight, ["exported weights changed", "layers.0.attention.wq.weight"]),
    "edited record": (lambda run, hf: edit_ledger(run, 4, lambda rec: rec["data"][0]["tokens"].update(ko=0)),
                      ["edited record: checkpoint step 4", "ledger.jsonl"]),
    "missing link": (lambda run, hf: edit_ledger(run, 4, None),
                     ["missing link: checkpoint step 8 names its parent", "a record was removed"]),
    "manifest changed": (change_a_manifest, ["data manifest changed after training", "shards that differ: train/"]),
    "shard bytes changed": (change_a_shard, ["data shard changed after training", "train/ko_00000.bin"]),
    "export record rewritten": (lambda run, hf: write_chain(hf, read_chain(hf)[:-1] + [envelope(
        {**read_chain(hf)[-1]["record"], "dtype": "bfloat16"})]), ["the export record", "is not in the run ledger"]),
    "export without a chain": (lambda run, hf: shutil.rmtree(hf / PROVENANCE_DIR),
                               ["exported without a provenance chain"]),
    "another seed claimed": (lambda run, hf: rewrite_chain(run, hf, lambda recs: recs[0].update(seed=1)),
                             ["initial weights: kfm's init with the recorded seed 1"]),
    "weights swapped, record rewritten": (swap_weights_and_rewrite_the_export_record,
                                          ["are not those of checkpoint step 8"]),
}


@pytest.mark.parametrize("what", TAMPERING)
def test_tampering_is_detected_and_named(scratch, tmp_path, what):
    run, hf = copy_run(scratch, tmp_path)
    assert verify(hf, run, data_dir=str(run / "data"), check_shards=True).verified  # before tampering
    tamper, expected = TAMPERING[what]
    tamper(run, hf)
    report = verify(hf, run, data_dir=str(run / "data"), check_shards=True)
    assert not report.verified and not report.from_scratch
    assert report.verdict.startswith("FAILED")
    text = "\n".join(report.failures)
    for needle in expected:
        assert needle in text, text


def test_signed_records_verify_against_the_team_key_and_resist_rewriting(run_dir, tiny_tokenizer, tmp_path):
    private, public = generate_keypair(tmp_path / "keys" / "team")
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(FileExistsError, match="orphan"):
        generate_keypair(tmp_path / "keys" / "team")
    job = make_job(run_dir, steps=4)
    job.provenance.signing_key = str(private)
    run_distributed(train_and_report, 1, job)
    hf = run_dir / "hf"
    export_checkpoint(run_dir / "checkpoints" / STEP4, tiny_tokenizer, hf, signing_key=str(private))
    report = verify(hf, run_dir, public_key=str(public))
    assert report.verified and report.signing["unsigned_records"] == 0 and report.signing["trusted_key"]
    assert "(the trusted key)" in report.to_text()

    # Rewritten history, re-linked so the ids still chain, but without the key: signatures no longer match.
    saved = {p: p.read_bytes() for p in (Ledger(run_dir).path, hf / PROVENANCE_DIR / "chain.jsonl")}
    rewrite_chain(run_dir, hf, lambda recs: recs[1]["data"][0]["tokens"].update(ko=0))
    report = verify(hf, run_dir, public_key=str(public))
    assert not report.verified and "unsigned record: checkpoint step 4" in "\n".join(report.failures)
    for path, data in saved.items():
        path.write_bytes(data)
    # ... or keeping the old signatures: they do not match the edited records.
    rewrite_chain(run_dir, hf, lambda recs: recs[1]["data"][0]["tokens"].update(ko=0), keep_signatures=True)
    report = verify(hf, run_dir)
    assert not report.verified and "bad signature: checkpoint step 4" in "\n".join(report.failures)
    # ... and re-signed with another key: not the team's.
    other, _ = generate_keypair(tmp_path / "keys" / "other")
    rewrite_chain(run_dir, hf, lambda recs: None, signer=Signer(other))
    report = verify(hf, run_dir, public_key=str(public))
    assert not report.verified and "is signed by key" in "\n".join(report.failures)


# ----- origins other than kfm's init -----
def test_a_run_from_an_imported_hf_model_is_not_called_from_scratch(run_dir, tiny_tokenizer, tmp_path):
    src = tmp_path / "src"
    random_hf_model("exaone4").save_pretrained(str(src), safe_serialization=True)
    job = make_job(run_dir, steps=4, init_from=str(src), init_layers="0-3,1-4")
    run_distributed(train_and_report, 1, job)
    export_checkpoint(run_dir / "checkpoints" / STEP4, tiny_tokenizer, run_dir / "hf")
    report = verify(run_dir / "hf", run_dir)
    assert report.verified and not report.from_scratch, report.to_text()
    assert kinds(report) == ["import", "upscale", "checkpoint", "export"]
    source_digest = digest_tensors(state_dict_tensors(load_hf_checkpoint(src)[1])).sha256
    assert report.origin == {"kind": "import", "source": str(src), "architecture": "Exaone4ForCausalLM",
                             "weights_sha256": source_digest,
                             "hf_config_sha256": report.chain[0]["record"]["hf_config_sha256"]}
    assert "NOT from scratch" in report.verdict and "imported Hugging Face model" in report.verdict
    assert source_digest in report.verdict
    assert any("depth up-scaled with layers 0-3,1-4" in note for note in report.notes)
    assert "NOT from scratch" in (run_dir / "hf" / "README.md").read_text()


def test_resuming_another_runs_checkpoint_is_recorded(scratch, tiny_tokenizer, tmp_path):
    # A checkpoint of another run, with its chain: recorded as a resume; the model is still from scratch.
    job = make_job(tmp_path / "b", steps=8, checkpoint={"resume": str(scratch / "checkpoints" / STEP4)})
    job.data_dir = str(scratch / "data")
    run_distributed(train_and_report, 1, job)
    export_checkpoint(tmp_path / "b" / "checkpoints" / STEP8, tiny_tokenizer, tmp_path / "b" / "hf")
    report = verify(tmp_path / "b" / "hf", tmp_path / "b")
    assert report.verified and report.from_scratch, report.to_text()
    assert kinds(report) == ["init", "checkpoint", "resume", "checkpoint", "export"]
    assert any("continued from another run checkpoint" in note for note in report.notes)

    # A checkpoint without a provenance record: the chain starts there, so the origin is unknown.
    bare = tmp_path / "bare" / STEP4
    shutil.copytree(scratch / "checkpoints" / STEP4, bare)
    shutil.rmtree(bare / PROVENANCE_DIR)
    job.run_dir, job.trainer.checkpoint.resume = str(tmp_path / "c"), str(bare)
    run_distributed(train_and_report, 1, job)
    export_checkpoint(tmp_path / "c" / "checkpoints" / STEP8, tiny_tokenizer, tmp_path / "c" / "hf")
    report = verify(tmp_path / "c" / "hf", tmp_path / "c")
    assert report.verified and not report.from_scratch
    assert "NOT from scratch" in report.verdict and "without a provenance record" in report.verdict

    # A checkpoint whose record does not match its weights is refused at resume.
    chain = read_chain(scratch / "checkpoints" / STEP4)
    chain[-1]["record"]["weights"]["sha256"] = "0" * 64
    write_chain(bare, chain)
    job.run_dir = str(tmp_path / "d")
    with pytest.raises(RuntimeError, match="changed after they were written"):
        run_distributed(train_and_report, 1, job)


# ----- digests -----
class Wrapped(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.module = model


def test_digest_is_independent_of_wrappers_and_recomputes_the_init_without_materialising():
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    from kfm.train.provenance.digests import init_digest

    cfg = ModelConfig(vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden_dim=96,
                      max_seq_len=64, tie_embeddings=True)
    model = Transformer(cfg)
    model.init_weights(seed=7)
    plain = digest_tensors(module_tensors(model))
    assert set(plain.tensors) == set(model.state_dict())  # a tied output projection is listed under both names
    model.layers[0] = checkpoint_wrapper(model.layers[0])
    assert digest_tensors(module_tensors(Wrapped(model))).sha256 == plain.sha256
    with torch.device("meta"):
        on_meta = Transformer(cfg)
    assert init_digest(on_meta, 7).sha256 == plain.sha256
    assert init_digest(on_meta, 8).sha256 != plain.sha256
    halved = digest_tensors(state_dict_tensors({k: v.bfloat16() for k, v in model.state_dict().items()}))
    assert halved.sha256 != plain.sha256
    with torch.no_grad():
        model.norm.weight[3] += 1e-6
    changed = digest_tensors(module_tensors(model))
    assert changed.differences(plain) == ["norm.weight"]


def test_hashing_holds_one_tensor_at_a_time():
    import gc
    import weakref

    alive: list = []
    most = 0

    def make() -> torch.Tensor:
        nonlocal most
        gc.collect()
        most = max(most, sum(ref() is not None for ref in alive))
        t = torch.randn(300, 200)
        alive.append(weakref.ref(t))
        return t

    def tensors():
        for i in range(6):
            yield [f"t{i}"], make()  # the generator keeps no reference

    digest = digest_tensors(tensors())
    assert len(digest.tensors) == 6 and most == 0  # every earlier tensor was freed before the next was made


def test_hashing_a_model_does_not_copy_it():
    """Peak memory while hashing a ~250 MB model (the benchmark's measurement, in a fresh process) grows by far
    less than a second copy would take."""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "bench" / "provenance.py"), "--memory-only"], cwd=root,
                         capture_output=True, text=True, timeout=300, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["size"] > 200e6
    assert got["growth"] < got["size"] / 8, got


def test_a_ledger_that_is_not_json_names_the_line(tmp_path):
    Ledger(tmp_path).append({"id": "x", "record": {}})
    with Ledger(tmp_path).path.open("a") as f:
        f.write("{not json\n")
    with pytest.raises(ProvenanceError, match=r"ledger.jsonl, line 2: not a JSON record"):
        Ledger(tmp_path).envelopes()


@pytest.mark.requires_gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_weights_initialised_on_a_gpu_digest_as_recomputed_on_a_cpu():
    """``verify`` recomputes the init on a CPU: a GPU run's init record must match it."""
    from kfm.train.provenance.digests import init_digest

    for tie in (True, False):
        cfg = ModelConfig(tie_embeddings=tie)
        on_gpu = Transformer(cfg).cuda()
        on_gpu.init_weights(seed=0)
        with torch.device("meta"):
            on_meta = Transformer(cfg)
        assert digest_tensors(module_tensors(on_gpu)).sha256 == init_digest(on_meta, 0).sha256
