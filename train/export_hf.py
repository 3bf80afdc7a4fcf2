"""Export a training checkpoint to a Hugging Face directory that ``transformers`` loads offline.

    python -m train.export_hf [run_dir=runs/demo] [checkpoint=<dir>] [out_dir=<run_dir>/hf]

Writes ``model.safetensors``, ``config.json`` (the stock class the model matches: Llama, Qwen2,
Qwen3 or EXAONE 4), ``generation_config.json`` and the tokenizer files (``tokenizer.model``, ``tokenizer.json``, ``tokenizer_config.json``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from model import ModelConfig, Transformer
from tokenizer.hf import load_sentencepiece, save_hf_tokenizer
from train.checkpoint import STATE_FILE, resolve_checkpoint
from train.engine import load_model_weights
from train.hf_convert import hf_architecture, to_hf_config, to_hf_state_dict
from train.model_card import last_eval, model_card

log = logging.getLogger(__name__)


@dataclass
class ExportJob:
    """``python -m train.export_hf``."""

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

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")


def export_checkpoint(ckpt: Path, tokenizer_dir: Path, out_dir: Path, dtype: str = "float32",
                      max_new_tokens: int = 64) -> Path:
    """Export a training checkpoint (any backend and world size) or a consolidated ``.safetensors`` file
    (``python -m train.consolidate``) to ``out_dir``."""
    if ckpt.suffix == ".safetensors":
        model, state = load_consolidated(ckpt)
        cfg = model.cfg
        check_tokenizer_vocab(tokenizer_dir, cfg.vocab_size)
    else:
        state = json.loads((ckpt / STATE_FILE).read_text())
        cfg = ModelConfig.from_dict(state["config"]["model"])
        check_tokenizer_vocab(tokenizer_dir, cfg.vocab_size)
        model = Transformer(cfg)
        load_model_weights(ckpt, model)
    out = export_model(model, cfg, tokenizer_dir, out_dir, dtype, max_new_tokens)
    evals = last_eval(ckpt.parent.parent / "metrics.jsonl", state["step"])  # <run_dir>/checkpoints/step_N
    (out / "README.md").write_text(model_card(cfg, hf_architecture(cfg), state, tokenizer_dir, evals))
    log.info("exported %s (step %d) to %s", ckpt, state["step"], out_dir)
    return out


def load_consolidated(path: Path) -> tuple[Transformer, dict]:
    """A model from a consolidated safetensors file (its metadata holds the step and model config)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if "model_config" not in meta:
        raise ValueError(f"{path} has no model_config metadata: consolidate checkpoints with `python -m train.consolidate`")
    cfg = ModelConfig.from_dict(json.loads(meta["model_config"]))
    model = Transformer(cfg)
    sd = load_file(str(path))
    if cfg.tie_embeddings:
        sd["output.weight"] = sd["tok_embeddings.weight"]
    model.load_state_dict(sd)
    return model, {"step": int(meta.get("step", 0)), "config": {"model": cfg.to_dict()}}


def check_tokenizer_vocab(tokenizer_dir: Path, vocab_size: int) -> None:
    sp = load_sentencepiece(tokenizer_dir / "tokenizer.model")
    if sp.get_piece_size() != vocab_size:
        raise ValueError(f"tokenizer in {tokenizer_dir} has {sp.get_piece_size()} pieces but the checkpoint's "
                         f"model.vocab_size is {vocab_size}: export with the tokenizer the model was trained with")


def export_model(model: Transformer, cfg: ModelConfig, tokenizer_dir: Path, out_dir: Path, dtype: str = "float32",
                 max_new_tokens: int = 64) -> Path:
    """Write ``model`` as the stock ``transformers`` class it matches, with tokenizer and generation config."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    check_tokenizer_vocab(tokenizer_dir, cfg.vocab_size)
    sp = load_sentencepiece(tokenizer_dir / "tokenizer.model")
    hf_cfg = to_hf_config(cfg, sp.bos_id(), sp.eos_id(), sp.pad_id(), dtype)
    hf = AutoModelForCausalLM.from_config(hf_cfg)
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(model.state_dict(), cfg), strict=False)
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"HF conversion mismatch: missing {missing}, unexpected {unexpected}")
    out_dir.mkdir(parents=True, exist_ok=True)
    hf.to(getattr(torch, dtype)).save_pretrained(str(out_dir), safe_serialization=True, max_shard_size="5GB")
    GenerationConfig(bos_token_id=sp.bos_id(), eos_token_id=sp.eos_id(), pad_token_id=sp.pad_id(),
                     max_new_tokens=max_new_tokens, do_sample=True, temperature=0.8, top_p=0.95,
                     repetition_penalty=1.1).save_pretrained(str(out_dir))
    save_hf_tokenizer(tokenizer_dir / "tokenizer.model", out_dir, model_max_length=cfg.max_seq_len)
    return out_dir


ConfigStore.instance().store(name="export_job_schema", node=ExportJob)


@hydra.main(version_base="1.3", config_path="../configs", config_name="export_hf")
def main(cfg) -> None:
    job: ExportJob = OmegaConf.to_object(cfg)
    consolidated = job.checkpoint.endswith(".safetensors")
    ckpt = Path(job.checkpoint) if consolidated else resolve_checkpoint(job.checkpoint, job.run_dir)
    export_checkpoint(ckpt, Path(job.tokenizer_dir), Path(job.out_dir), job.dtype, job.max_new_tokens)


if __name__ == "__main__":
    main()
