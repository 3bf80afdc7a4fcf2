"""Write a kfm model as a Hugging Face directory that ``transformers`` loads offline.

``model.safetensors``, ``config.json`` (the stock class the model matches: Llama, Qwen2, Qwen3 or EXAONE 4),
``generation_config.json`` and the tokenizer files (``tokenizer.model``, ``tokenizer.json``,
``tokenizer_config.json``). Exporting a checkpoint with its provenance is ``kfm.train.cli.export_hf``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from kfm.model import ModelConfig, Transformer
from kfm.tokenizer.hf import load_sentencepiece, save_hf_tokenizer
from kfm.train.hf.convert import add_transformers4_keys, to_hf_config, to_hf_state_dict

log = logging.getLogger(__name__)


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
    add_transformers4_keys(out_dir / "config.json", cfg, dtype)
    GenerationConfig(bos_token_id=sp.bos_id(), eos_token_id=sp.eos_id(), pad_token_id=sp.pad_id(),
                     max_new_tokens=max_new_tokens, do_sample=True, temperature=0.8, top_p=0.95,
                     repetition_penalty=1.1).save_pretrained(str(out_dir))
    save_hf_tokenizer(tokenizer_dir / "tokenizer.model", out_dir, model_max_length=cfg.max_seq_len)
    return out_dir
