"""Export a training checkpoint to a Hugging Face directory, with its provenance chain extended and verified.

    python -m kfm.train.cli.export_hf [run_dir=runs/demo] [checkpoint=<dir>] [out_dir=<run_dir>/hf]

The files are written by ``kfm.train.hf.export`` (``model.safetensors``, ``config.json`` as the stock class the
model matches: Llama, Qwen2, Qwen3 or EXAONE 4, ``generation_config.json``, the tokenizer files); this tool
reads the checkpoint, adds the export record to the chain and the ledger, and verifies the result.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from omegaconf import OmegaConf

from kfm.model import ModelConfig, Transformer
from kfm.model.config import MTPConfig
from kfm.train.checkpoint.layout import read_state, resolve_checkpoint
from kfm.train.checkpoint.reader import load_model_weights
from kfm.train.hf.convert import hf_architecture
from kfm.train.hf.export import check_tokenizer_vocab, export_model
from kfm.train.hf.model_card import last_eval, model_card
from kfm.train.provenance.digests import digest_tensors, exported_groups
from kfm.train.provenance.ledger import Ledger, code_version, envelope, export_file_hashes, now, read_chain, write_chain
from kfm.train.provenance.signing import Signer
from kfm.train.provenance.verify import verify as verify_export
from kfm.train.provenance.verify import write_report

log = logging.getLogger(__name__)
from kfm.schemas import register_schemas
from kfm.train.cli import CONFIG_DIR


def export_checkpoint(ckpt: Path, tokenizer_dir: Path, out_dir: Path, dtype: str = "float32",
                      max_new_tokens: int = 64, run_dir: Path | None = None, signing_key: str = "",
                      verify: bool = True, drop_mtp: bool = False) -> Path:
    """Export a training checkpoint (any backend and world size) or a consolidated ``.safetensors`` file
    (``python -m kfm.train.cli.consolidate``) to ``out_dir``; its provenance chain goes along, extended by an export
    record (also appended to the ledger of ``run_dir``, by default the checkpoint's run), and is verified.
    ``drop_mtp``: leave the multi-token prediction modules out (for a class that cannot store them)."""
    if ckpt.suffix == ".safetensors":
        model, state, chain = load_consolidated(ckpt)
        cfg = model.cfg
        check_tokenizer_vocab(tokenizer_dir, cfg.vocab_size)
    else:
        state = read_state(ckpt)
        cfg = ModelConfig.from_dict(state["config"]["model"])
        check_tokenizer_vocab(tokenizer_dir, cfg.vocab_size)
        model = Transformer(cfg)
        load_model_weights(ckpt, model)
        chain = read_chain(ckpt)
    run_dir = run_dir or ckpt.parent.parent  # <run_dir>/checkpoints/step_N
    out = export_model(model, cfg, tokenizer_dir, out_dir, dtype, max_new_tokens, drop_mtp)
    evals = last_eval(run_dir / "metrics.jsonl", state["step"])
    card_cfg = dataclasses.replace(cfg, mtp=MTPConfig()) if drop_mtp else cfg  # what the export holds
    (out / "README.md").write_text(model_card(card_cfg, hf_architecture(cfg), state, tokenizer_dir, evals))
    log.info("exported %s (step %d) to %s", ckpt, state["step"], out_dir)
    if chain:
        record_export(model, cfg, chain, out, run_dir, state["step"], dtype, ckpt, signing_key, drop_mtp)
        if verify:
            report = verify_export(out, run_dir)
            write_report(report, out)
            log.info("provenance: %s", report.verdict)
    else:
        log.warning("%s carries no provenance chain (trained with provenance.enabled=false?): the export cannot "
                    "be verified", ckpt)
    return out

def record_export(model: Transformer, cfg: ModelConfig, chain: list[dict], out: Path, run_dir: Path, step: int,
                  dtype: str, source: Path, signing_key: str = "", drop_mtp: bool = False) -> dict:
    """The export record: the digest of the weights as written (cast to ``dtype``; without the multi-token
    prediction modules with ``drop_mtp``), chained to the checkpoint."""
    cast = getattr(torch, dtype)
    digest = digest_tensors((names, p.detach().to(cast)) for names, p in exported_groups(model, drop_mtp))
    rec = {"kind": "export", **({"drop_mtp": True} if drop_mtp and cfg.mtp.depth else {}), "parent": chain[-1]["id"], "time": now(), "code": code_version(), "step": step,
           "dtype": dtype, "architecture": hf_architecture(cfg), "source": str(source), "weights": digest.summary(),
           "files": export_file_hashes(out)}
    env = envelope(rec, Signer(signing_key) if signing_key else None)
    write_chain(out, [*chain, env], digest.to_json())
    Ledger(run_dir).append(env)
    return env

def load_consolidated(path: Path) -> tuple[Transformer, dict, list[dict] | None]:
    """A model from a consolidated safetensors file (its metadata holds the step, model config and the
    checkpoint's provenance chain)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if "model_config" not in meta:
        raise ValueError(f"{path} has no model_config metadata: consolidate checkpoints with `python -m kfm.train.cli.consolidate`")
    cfg = ModelConfig.from_dict(json.loads(meta["model_config"]))
    model = Transformer(cfg)
    sd = load_file(str(path))
    if cfg.tie_embeddings:
        sd["output.weight"] = sd["tok_embeddings.weight"]
    model.load_state_dict(sd)
    chain = [json.loads(line) for line in meta["provenance_chain"].splitlines()] if "provenance_chain" in meta else None
    return model, {"step": int(meta.get("step", 0)), "config": {"model": cfg.to_dict()}}, chain


@dataclass
class ExportJob:
    """``python -m kfm.train.cli.export_hf``."""

    run_dir: str = "runs/demo"
    checkpoint: str = ""
    """Checkpoint directory or consolidated ``.safetensors`` file; empty means the newest checkpoint under
    ``<run_dir>/checkpoints``."""
    tokenizer_dir: str = "${run_dir}/tokenizer"
    """Folder with ``tokenizer.model`` and its Hugging Face files."""
    out_dir: str = "${run_dir}/hf"
    dtype: str = "float32"
    """Weight dtype written to the export: ``float32`` or ``bfloat16``."""
    max_new_tokens: int = 64
    """Default generation length recorded in ``generation_config.json``."""
    signing_key: str = ""
    """Ed25519 private key (PEM) that signs the export's provenance record (``python -m kfm.train.cli.keygen``)."""
    verify: bool = True
    """Verify the provenance chain after exporting (``kfm.train.provenance.verify``) and put the report in the model card."""
    drop_mtp: bool = False
    """Leave the multi-token prediction modules out: needed for a class whose checkpoints cannot store them (every
    one but ``DeepseekV3ForCausalLM``); they only serve speculative decoding."""

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")


register_schemas("export_job_schema")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export_hf")
def main(cfg) -> None:
    job: ExportJob = OmegaConf.to_object(cfg)
    consolidated = job.checkpoint.endswith(".safetensors")
    ckpt = Path(job.checkpoint) if consolidated else resolve_checkpoint(job.checkpoint, job.run_dir)
    export_checkpoint(ckpt, Path(job.tokenizer_dir), Path(job.out_dir), job.dtype, job.max_new_tokens,
                      Path(job.run_dir) if consolidated else None, job.signing_key, job.verify, job.drop_mtp)


if __name__ == "__main__":
    main()
