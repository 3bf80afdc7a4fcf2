"""kfm ↔ Hugging Face: one key-mapping table per architecture family, both directions.

kfm's attention uses the half-split RoPE layout of ``transformers``' Llama, Qwen2, Qwen3 and
EXAONE 4 models, so weights map one to one with no permutation. ``hf_architecture`` says which
stock class a config matches (or names the feature none of them has).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from kfm.model.config import ModelConfig
from kfm.train.hf import deepseek
from kfm.train.hf.deepseek import MLA_KEYS, MTP_KEYS, deepseek_problems, flatten_mtp, nest_mtp
from kfm.train.hf.moe import (BIAS_KEYS, ROUTED_KEYS, SHARED_KEYS, in_memory_layout, moe_architecture,
                              moe_from_hf_config, moe_hf_config)

# kfm name pattern → HF name pattern; "{i}" is the layer index.
LLAMA_KEYS: dict[str, str] = {
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
_QKV_BIAS = {f"layers.{{i}}.attention.w{x}.bias": f"model.layers.{{i}}.self_attn.{x}_proj.bias" for x in "qkv"}
_QK_NORM = {f"layers.{{i}}.attention.{x}_norm.weight": f"model.layers.{{i}}.self_attn.{x}_norm.weight" for x in "qk"}
# EXAONE 4 normalises each sublayer's output: kfm's two block norms are its post-attention/feed-forward norms.
_EXAONE4_NORMS = {"layers.{i}.attention_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
                  "layers.{i}.ffn_norm.weight": "model.layers.{i}.post_feedforward_layernorm.weight"}
KEY_MAPS: dict[str, dict[str, str]] = {
    "LlamaForCausalLM": LLAMA_KEYS,
    "Qwen2ForCausalLM": {**LLAMA_KEYS, **_QKV_BIAS},
    "Qwen3ForCausalLM": {**LLAMA_KEYS, **_QK_NORM},
    "Exaone4ForCausalLM": {**LLAMA_KEYS, **_QK_NORM, **_EXAONE4_NORMS},
    "Qwen3MoeForCausalLM": {**LLAMA_KEYS, **_QK_NORM, **ROUTED_KEYS},
    "ExaoneMoeForCausalLM": {**LLAMA_KEYS, **_QK_NORM, **ROUTED_KEYS, **SHARED_KEYS, **BIAS_KEYS},
    deepseek.ARCH: {**LLAMA_KEYS, **MLA_KEYS, **ROUTED_KEYS, **SHARED_KEYS, **BIAS_KEYS, **MTP_KEYS},
}
MTP_ARCHITECTURES = (deepseek.ARCH,)
"""The classes whose checkpoints hold multi-token prediction modules (as extra decoder layers)."""
MOE_ARCHITECTURES = ("Qwen3MoeForCausalLM", "ExaoneMoeForCausalLM")
KEY_MAP = LLAMA_KEYS


def hf_architecture(cfg: ModelConfig) -> str:
    """The stock ``transformers`` class ``cfg`` matches; a ValueError naming the feature if none does."""
    if cfg.mla.enabled:
        if problems := deepseek_problems(cfg):
            raise ValueError(f"no stock transformers class can hold this latent-attention model: {deepseek.ARCH} "
                             f"lacks {', '.join(problems)}. Change those settings, or train without a Hugging Face "
                             "export")
        return deepseek.ARCH
    if cfg.moe.n_experts:
        return moe_architecture(cfg)
    hybrid = "L" in cfg.layer_pattern
    if cfg.norm_placement == "post" or hybrid:
        problems = [what for bad, what in (
            (not cfg.qk_norm, "post-norm/hybrid attention without qk_norm"),
            (cfg.qkv_bias, "qkv_bias"),
            (cfg.norm_placement != "post", "sliding-window layers with pre-norm"),
            (hybrid and cfg.rope_on_global_layers, "RoPE on the global layers of a hybrid model"),
            (cfg.head_dim is not None and cfg.head_dim * cfg.n_heads != cfg.dim, "head_dim != dim / n_heads"),
        ) if bad]
        if problems:
            raise ValueError(f"no stock transformers architecture has {', '.join(problems)} (EXAONE 4, the closest, "
                             "needs post norms, QK-norm, no QKV bias, global layers without RoPE)")
        return "Exaone4ForCausalLM"
    if cfg.qkv_bias and cfg.qk_norm:
        raise ValueError("no stock transformers architecture has both qkv_bias and qk_norm")
    if cfg.qkv_bias:
        if cfg.head_dim is not None and cfg.head_dim * cfg.n_heads != cfg.dim:
            raise ValueError("Qwen2 (qkv_bias) cannot have head_dim != dim / n_heads")
        return "Qwen2ForCausalLM"
    return "Qwen3ForCausalLM" if cfg.qk_norm else "LlamaForCausalLM"


def _compile(table: dict[str, str]) -> list[tuple[re.Pattern, str]]:
    return [(re.compile("^" + re.escape(src).replace(r"\{i\}", r"(\d+)") + "$"), dst) for src, dst in table.items()]


_TO_HF = {arch: _compile(table) for arch, table in KEY_MAPS.items()}
_FROM_HF = {arch: _compile({v: k for k, v in table.items()}) for arch, table in KEY_MAPS.items()}


def _rename(key: str, rules: list[tuple[re.Pattern, str]]) -> str:
    for pattern, dst in rules:
        if m := pattern.match(key):
            return dst.replace("{i}", m.group(1)) if m.groups() else dst
    raise KeyError(f"no Hugging Face mapping for parameter {key!r}; add it to train/hf/convert.py KEY_MAPS")


def check_mtp_export(cfg: ModelConfig, drop_mtp: bool = False) -> None:
    """A ValueError naming the way out when ``cfg`` has multi-token prediction modules that its class cannot
    store (and ``drop_mtp`` does not leave them out)."""
    arch = hf_architecture(cfg)
    if cfg.mtp.depth and not drop_mtp and arch not in MTP_ARCHITECTURES:
        raise ValueError(f"model.mtp.depth={cfg.mtp.depth}: {arch} checkpoints cannot store multi-token prediction "
                         f"modules ({', '.join(MTP_ARCHITECTURES)} can: latent attention). Export the main model "
                         "alone with drop_mtp=true (the modules only serve speculative decoding), or train with "
                         "model.mtp.depth=0")


def to_hf_state_dict(sd: dict[str, torch.Tensor], cfg: ModelConfig, drop_mtp: bool = False
                     ) -> dict[str, torch.Tensor]:
    """Hugging Face's in-memory names (MoE experts stacked, gate and up fused, as kfm holds them); multi-token
    prediction modules as the extra layers their class stores (or left out with ``drop_mtp``)."""
    arch = hf_architecture(cfg)
    check_mtp_export(cfg, drop_mtp)
    sd = {k: v for k, v in sd.items() if not (drop_mtp and k.startswith("mtp."))}
    sd = flatten_mtp(sd, cfg.n_layers)
    if arch in ("ExaoneMoeForCausalLM", deepseek.ARCH) and not cfg.moe.expert_bias:  # the class always has one
        layers = range(cfg.n_layers + (0 if drop_mtp else cfg.mtp.depth))
        sd.update({f"layers.{i}.feed_forward.expert_bias": torch.zeros(cfg.moe.n_experts)
                   for i in layers if cfg.is_moe(i)})
    rules = _TO_HF[arch]
    out = {_rename(k, rules): v for k, v in sd.items()}
    if cfg.tie_embeddings:
        out.pop("lm_head.weight", None)
    return out


def from_hf_tensors(items, cfg: ModelConfig):
    """kfm's (names, tensor) for a stream of a Hugging Face checkpoint's (key, tensor): derived buffers left out,
    tied embeddings under both names (an ``lm_head`` tied to them left out), MoE experts stacked from their
    per-expert keys (as saved) or taken as held in memory."""
    rules = _FROM_HF[hf_architecture(cfg)]
    items = ((k, v) for k, v in items
             if not k.endswith("rotary_emb.inv_freq") and not deepseek.is_mtp_copy(k, cfg.n_layers))
    for key, tensor in in_memory_layout(items, cfg.moe.n_experts):
        name = nest_mtp(_rename(key, rules), cfg.n_layers)
        if cfg.tie_embeddings and name == "output.weight":
            continue
        yield ([name, "output.weight"] if cfg.tie_embeddings and name == "tok_embeddings.weight" else [name]), tensor


def from_hf_state_dict(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    return {name: tensor for names, tensor in from_hf_tensors(sd.items(), cfg) for name in names}


def hf_rope_parameters(cfg: ModelConfig) -> dict:
    r = cfg.rope
    params = {"rope_type": "default" if r.scaling == "none" else r.scaling, "rope_theta": r.theta}
    if r.scaling != "none":
        params["factor"] = r.factor
    if r.scaling in ("llama3", "yarn"):
        params["original_max_position_embeddings"] = r.original_max_seq_len
    if r.scaling == "llama3":
        params.update(low_freq_factor=r.low_freq_factor, high_freq_factor=r.high_freq_factor)
    if r.scaling == "yarn":
        params.update(beta_fast=r.beta_fast, beta_slow=r.beta_slow)
        params.update({k: getattr(r, k) for k in ("mscale", "mscale_all_dim") if getattr(r, k)})
    return params


def add_transformers4_keys(config_json: Path, cfg: ModelConfig, dtype: str) -> None:
    """Also write the keys transformers 4.x reads (``rope_theta``, ``rope_scaling``, ``torch_dtype``) into a
    ``config.json`` that transformers 5 wrote with ``rope_parameters`` and ``dtype`` only: without them 4.x
    silently runs RoPE at its default theta of 10000. Both versions read the result the same way
    (tests/test_hf_export.py loads it under ``TRANSFORMERS4_FLOOR``)."""
    data = json.loads(config_json.read_text(encoding="utf-8"))
    rope = hf_rope_parameters(cfg)
    data["rope_theta"] = rope["rope_theta"]
    scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
    data["rope_scaling"] = None if scaling["rope_type"] == "default" else scaling
    data["torch_dtype"] = dtype
    config_json.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


TRANSFORMERS4_FLOOR = "4.54.0"
"""The oldest transformers an export loads in (EXAONE 4 arrived in 4.54.0); ``pyproject.toml`` states it."""


def to_hf_config(cfg: ModelConfig, bos_id: int = 1, eos_id: int = 2, pad_id: int = 3, dtype: str = "float32"):
    """The ``transformers`` config of the stock class ``cfg`` matches (``hf_architecture``)."""
    import transformers

    arch = hf_architecture(cfg)
    common = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.ffn_hidden_dim,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        hidden_act="silu", max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
        rope_parameters=hf_rope_parameters(cfg), tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id, initializer_range=cfg.init_std,
        dtype=dtype, architectures=[arch],
    )
    if arch == "LlamaForCausalLM":
        return transformers.LlamaConfig(**common, head_dim=cfg.head_size, attention_bias=False, mlp_bias=False)
    if arch == "Qwen2ForCausalLM":
        return transformers.Qwen2Config(**common, use_sliding_window=False)
    if arch in MOE_ARCHITECTURES:
        return moe_hf_config(cfg, arch, common)
    if arch == deepseek.ARCH:
        return deepseek.deepseek_hf_config(cfg, common)
    if arch == "Qwen3ForCausalLM":
        return transformers.Qwen3Config(**common, head_dim=cfg.head_size, attention_bias=False,
                                        use_sliding_window=False)
    layer_types = ["sliding_attention" if cfg.is_local(i) else "full_attention" for i in range(cfg.n_layers)]
    return transformers.Exaone4Config(**common, sliding_window=cfg.sliding_window or None, layer_types=layer_types)


def _rope_from_hf(hf_cfg):
    from kfm.model.config import RopeConfig

    rope = dict(getattr(hf_cfg, "rope_parameters", None) or {})
    kind = rope.get("rope_type", "default")
    if kind not in ("default", "linear", "llama3", "yarn"):
        raise ValueError(f"RoPE type {kind!r} of this checkpoint has no kfm counterpart (default, linear, llama3, yarn)")
    r = RopeConfig(theta=float(rope.get("rope_theta", getattr(hf_cfg, "rope_theta", 10000.0))),
                   scaling="none" if kind == "default" else kind)
    if kind != "default":
        r.factor = float(rope["factor"])
    if kind in ("llama3", "yarn"):
        r.original_max_seq_len = int(rope["original_max_position_embeddings"])
    if kind == "llama3":
        r.low_freq_factor, r.high_freq_factor = float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
    if kind == "yarn":
        r.beta_fast, r.beta_slow = float(rope.get("beta_fast", 32.0)), float(rope.get("beta_slow", 1.0))
        r.mscale, r.mscale_all_dim = float(rope.get("mscale") or 0.0), float(rope.get("mscale_all_dim") or 0.0)
        if rope.get("attention_factor") is not None:
            raise ValueError("yarn with an explicit attention_factor has no kfm counterpart (kfm derives it from "
                             "factor, mscale and mscale_all_dim)")
    return r


def shortest_period(kinds: list[str]) -> str:
    """The shortest pattern of G/L letters that, repeated, gives every layer's kind."""
    letters = "".join(kinds)
    for n in range(1, len(letters) + 1):
        if all(letters[i] == letters[i % n] for i in range(len(letters))):
            return letters[:n]
    return letters


def from_hf_config(hf_cfg) -> ModelConfig:
    """kfm's config for a ``transformers`` config of a supported architecture; a ValueError naming what
    kfm cannot represent otherwise."""
    archs = getattr(hf_cfg, "architectures", None) or []
    arch = archs[0] if archs else ""
    if arch not in KEY_MAPS:
        raise ValueError(f"architecture {arch or hf_cfg.model_type!r} is not supported: kfm imports "
                         f"{', '.join(KEY_MAPS)}")
    unsupported = [what for bad, what in (
        (getattr(hf_cfg, "hidden_act", "silu") != "silu", f"hidden_act={getattr(hf_cfg, 'hidden_act', None)}"),
        (getattr(hf_cfg, "mlp_bias", False), "mlp_bias"),
        (arch != "Qwen2ForCausalLM" and getattr(hf_cfg, "attention_bias", False), "attention_bias"),
        (arch in ("Qwen2ForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM")
         and getattr(hf_cfg, "use_sliding_window", False),
         "use_sliding_window"),
    ) if bad]
    if unsupported:
        raise ValueError(f"{arch} checkpoint uses {', '.join(unsupported)}, which kfm's model does not have")
    heads = hf_cfg.num_attention_heads
    head_dim = getattr(hf_cfg, "head_dim", None)
    cfg = dict(
        vocab_size=hf_cfg.vocab_size, dim=hf_cfg.hidden_size, n_layers=hf_cfg.num_hidden_layers, n_heads=heads,
        n_kv_heads=hf_cfg.num_key_value_heads, ffn_hidden_dim=hf_cfg.intermediate_size,
        head_dim=head_dim if head_dim and head_dim * heads != hf_cfg.hidden_size else None,
        max_seq_len=hf_cfg.max_position_embeddings, rope=_rope_from_hf(hf_cfg), norm_eps=hf_cfg.rms_norm_eps,
        tie_embeddings=bool(hf_cfg.tie_word_embeddings), init_std=getattr(hf_cfg, "initializer_range", 0.02),
        qkv_bias=arch == "Qwen2ForCausalLM", qk_norm=arch in ("Qwen3ForCausalLM", "Exaone4ForCausalLM"),
    )
    if arch == deepseek.ARCH:
        cfg.update(deepseek.deepseek_from_hf_config(hf_cfg), n_kv_heads=heads)
    if arch in MOE_ARCHITECTURES:
        moe = moe_from_hf_config(hf_cfg, arch)
        letters = moe.pop("letters", None)
        if letters and "L" in letters:
            moe.update(layer_pattern=shortest_period(letters))
        else:
            moe.pop("sliding_window", None)
        cfg.update(moe)
    if arch == "Exaone4ForCausalLM":
        kinds = ["L" if t == "sliding_attention" else "G" for t in (hf_cfg.layer_types or ["full_attention"])]
        hybrid = "L" in kinds
        cfg.update(norm_placement="post", layer_pattern=shortest_period(kinds),
                   sliding_window=(hf_cfg.sliding_window or 0) if hybrid else 0, rope_on_global_layers=not hybrid)
    return ModelConfig(**cfg)
