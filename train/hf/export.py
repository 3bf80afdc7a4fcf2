"""Write a kfm model as a Hugging Face directory that ``transformers`` loads offline.

``model.safetensors``, ``config.json`` (the stock class the model matches: Llama, Qwen2, Qwen3 or EXAONE 4),
``generation_config.json`` and the tokenizer files (``tokenizer.model``, ``tokenizer.json``,
``tokenizer_config.json``). Exporting a checkpoint with its provenance is ``kfm.train.cli.export_hf``.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch

from kfm.model import ModelConfig, Transformer
from kfm.tokenizer.hf import load_sentencepiece, save_hf_tokenizer
from kfm.train.hf.convert import add_transformers4_keys, check_mtp_export, to_hf_config, to_hf_state_dict
from kfm.train.hf.deepseek import mtp_copies
from kfm.train.hf.moe import saved_layout

log = logging.getLogger(__name__)


def check_tokenizer_vocab(tokenizer_dir: Path, vocab_size: int) -> None:
    sp = load_sentencepiece(tokenizer_dir / "tokenizer.model")
    if sp.get_piece_size() != vocab_size:
        raise ValueError(f"tokenizer in {tokenizer_dir} has {sp.get_piece_size()} pieces but the checkpoint's "
                         f"model.vocab_size is {vocab_size}: export with the tokenizer the model was trained with")


MTP_FILE = "model-mtp.safetensors"
"""Where an export's multi-token prediction layers go (the class itself holds none), listed in the index."""


def write_extra_tensors(out_dir: Path, tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    """``tensors`` in ``MTP_FILE`` beside what ``save_pretrained`` wrote, in the safetensors index (created for a
    single-file export), so that loaders which read the index find them."""
    from safetensors.torch import save_file

    save_file({k: v.detach().to(dtype, copy=True) for k, v in tensors.items()}, str(out_dir / MTP_FILE),
              metadata={"format": "pt"})
    index_path = out_dir / "model.safetensors.index.json"
    if index_path.is_file():
        index = json.loads(index_path.read_text())
    else:
        from safetensors import safe_open

        with safe_open(str(out_dir / "model.safetensors"), "pt") as f:
            index = {"metadata": {}, "weight_map": {k: "model.safetensors" for k in f.keys()}}
    index["weight_map"].update({k: MTP_FILE for k in tensors})
    index.setdefault("metadata", {})["total_size"] = sum(
        (out_dir / name).stat().st_size for name in set(index["weight_map"].values()))
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def export_model(model: Transformer, cfg: ModelConfig, tokenizer_dir: Path, out_dir: Path, dtype: str = "float32",
                 max_new_tokens: int = 64, drop_mtp: bool = False) -> Path:
    """Write ``model`` as the stock ``transformers`` class it matches, with tokenizer and generation config; its
    multi-token prediction modules as the extra layers that class's checkpoints hold (``drop_mtp``: left out)."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    check_tokenizer_vocab(tokenizer_dir, cfg.vocab_size)
    check_mtp_export(cfg, drop_mtp)
    sp = load_sentencepiece(tokenizer_dir / "tokenizer.model")
    hf_cfg = to_hf_config(cfg, sp.bos_id(), sp.eos_id(), sp.pad_id(), dtype)
    if drop_mtp and hasattr(hf_cfg, "num_mtp_layers"):
        hf_cfg.num_mtp_layers = 0
    hf = AutoModelForCausalLM.from_config(hf_cfg)
    sd = to_hf_state_dict(model.state_dict(), cfg, drop_mtp)
    extra = {k: sd.pop(k) for k in [k for k in sd if _layer_index(k) >= cfg.n_layers]}
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"HF conversion mismatch: missing {missing}, unexpected {unexpected}")
    out_dir.mkdir(parents=True, exist_ok=True)
    hf.to(getattr(torch, dtype)).save_pretrained(str(out_dir), safe_serialization=True, max_shard_size="5GB")
    if extra:
        extra = saved_layout(extra) | mtp_copies(cfg, model.tok_embeddings.weight, model.output.weight)
        write_extra_tensors(out_dir, extra, getattr(torch, dtype))
    add_transformers4_keys(out_dir / "config.json", cfg, dtype)
    GenerationConfig(bos_token_id=sp.bos_id(), eos_token_id=sp.eos_id(), pad_token_id=sp.pad_id(),
                     max_new_tokens=max_new_tokens, do_sample=True, temperature=0.8, top_p=0.95,
                     repetition_penalty=1.1).save_pretrained(str(out_dir))
    save_hf_tokenizer(tokenizer_dir / "tokenizer.model", out_dir, model_max_length=cfg.max_seq_len)
    return out_dir


def _layer_index(key: str) -> int:
    m = re.match(r"^model\.layers\.(\d+)\.", key)
    return int(m.group(1)) if m else -1
