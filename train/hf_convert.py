"""kfm ↔ Hugging Face Llama: one key-mapping table, both directions.

kfm's attention uses the half-split RoPE layout that ``LlamaForCausalLM`` uses, so
weights map one to one with no permutation.
"""

from __future__ import annotations

import re

import torch

from model.config import ModelConfig

# kfm name pattern → HF name pattern; "{i}" is the layer index.
KEY_MAP: dict[str, str] = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "layers.{i}.attention.wq.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "layers.{i}.attention.wk.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "layers.{i}.attention.wv.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "layers.{i}.attention.wo.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "layers.{i}.feed_forward.w1.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "layers.{i}.feed_forward.w3.weight": "model.layers.{i}.mlp.up_proj.weight",
    "layers.{i}.feed_forward.w2.weight": "model.layers.{i}.mlp.down_proj.weight",
    "layers.{i}.attention_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "layers.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def _compile(table: dict[str, str]) -> list[tuple[re.Pattern, str]]:
    return [(re.compile("^" + re.escape(src).replace(r"\{i\}", r"(\d+)") + "$"), dst) for src, dst in table.items()]


_TO_HF = _compile(KEY_MAP)
_FROM_HF = _compile({v: k for k, v in KEY_MAP.items()})


def _rename(key: str, rules: list[tuple[re.Pattern, str]]) -> str:
    for pattern, dst in rules:
        if m := pattern.match(key):
            return dst.replace("{i}", m.group(1)) if m.groups() else dst
    raise KeyError(f"no Hugging Face mapping for parameter {key!r}; add it to train/hf_convert.py KEY_MAP")


def to_hf_state_dict(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    out = {_rename(k, _TO_HF): v for k, v in sd.items()}
    if cfg.tie_embeddings:
        out.pop("lm_head.weight", None)
    return out


def from_hf_state_dict(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    out = {_rename(k, _FROM_HF): v for k, v in sd.items() if not k.endswith("rotary_emb.inv_freq")}
    if cfg.tie_embeddings:
        out["output.weight"] = out["tok_embeddings.weight"]
    return out


def to_hf_config(cfg: ModelConfig, bos_id: int = 1, eos_id: int = 2, pad_id: int = 3, dtype: str = "float32"):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.dim,
        intermediate_size=cfg.ffn_hidden_dim,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim,
        hidden_act="silu",
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        initializer_range=cfg.init_std,
        dtype=dtype,
        architectures=["LlamaForCausalLM"],
    )


def from_hf_config(hf_cfg) -> ModelConfig:
    rope = getattr(hf_cfg, "rope_parameters", None) or {}
    return ModelConfig(
        vocab_size=hf_cfg.vocab_size, dim=hf_cfg.hidden_size, n_layers=hf_cfg.num_hidden_layers,
        n_heads=hf_cfg.num_attention_heads, n_kv_heads=hf_cfg.num_key_value_heads,
        ffn_hidden_dim=hf_cfg.intermediate_size, max_seq_len=hf_cfg.max_position_embeddings,
        rope_theta=float(rope.get("rope_theta", getattr(hf_cfg, "rope_theta", 10000.0))),
        norm_eps=hf_cfg.rms_norm_eps, tie_embeddings=hf_cfg.tie_word_embeddings,
    )
