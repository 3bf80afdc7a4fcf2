"""Latent-attention models ↔ Hugging Face ``DeepseekV3ForCausalLM``, multi-token prediction modules included.

kfm's latent attention holds DeepSeek-V3's projections one to one (``wq_a`` = ``q_a_proj``, ``q_norm`` =
``q_a_layernorm``, ``wkv_a`` = ``kv_a_proj_with_mqa`` ...), its MoE layers the routed experts as the class holds
them in memory (``kfm.train.hf.moe``). What the class can express (``deepseek_problems``): sigmoid routing with the
expert bias (always present: zero when kfm has none), groups, shared experts (at least one), dense first layers,
pre-norm blocks, no sliding window, no post-MoE norm (A.X K1's, which ``AXK1ForCausalLM`` has, without MTP).

Multi-token prediction module k is written as decoder layer ``n_layers + k`` (DeepSeek-V3's published layout,
read by serving engines for speculative decoding and by ``transformers``' ``MtpModel``): the block's keys plus
``enorm``, ``hnorm``, ``eh_proj``, ``shared_head.norm``, and copies of the embedding (``embed_tokens``) and head
(``shared_head.head``). ``DeepseekV3ForCausalLM`` itself ignores those layers when loading; they travel in a file
of their own, listed in the safetensors index.
"""

from __future__ import annotations

import re

import torch

from kfm.model.config import LatentAttentionConfig, ModelConfig, MoEConfig

ARCH = "DeepseekV3ForCausalLM"
MLA_KEYS = {f"layers.{{i}}.attention.{ours}.weight": f"model.layers.{{i}}.self_attn.{theirs}.weight"
            for ours, theirs in (("wq", "q_proj"), ("wq_a", "q_a_proj"), ("q_norm", "q_a_layernorm"),
                                 ("wq_b", "q_b_proj"), ("wkv_a", "kv_a_proj_with_mqa"), ("kv_norm", "kv_a_layernorm"),
                                 ("wkv_b", "kv_b_proj"), ("wo", "o_proj"))}
MTP_KEYS = {f"layers.{{i}}.mtp_{part}.weight": f"model.layers.{{i}}.{theirs}.weight"
            for part, theirs in (("enorm", "enorm"), ("hnorm", "hnorm"), ("eh_proj", "eh_proj"),
                                 ("norm", "shared_head.norm"))}
"""A multi-token module's own tensors, under kfm's flat names for module k: layer ``n_layers + k``."""
_MTP = re.compile(r"^mtp\.layers\.(\d+)\.(.+)$")
_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
_OWN = ("enorm", "hnorm", "eh_proj", "norm")
MTP_COPIES = ("embed_tokens.weight", "shared_head.head.weight")
"""The main model's embedding and head, copied into each module's layer as the published checkpoints hold them."""


def deepseek_problems(cfg: ModelConfig) -> list[str]:
    """What ``cfg`` uses that ``DeepseekV3ForCausalLM`` cannot express; empty when it exports."""
    m = cfg.moe
    checks = [
        (not cfg.mla.enabled, "grouped-query attention (it has latent attention)"),
        (cfg.norm_placement != "pre", "post-norm blocks"),
        ("L" in cfg.layer_pattern, "sliding-window layers"),
        (not cfg.rope_on_global_layers, "layers without RoPE"),
    ]
    if m.n_experts:
        checks += [
            (m.score_func != "sigmoid", f"{m.score_func} routing (it routes by sigmoid)"),
            (m.n_shared_experts < 1, "no shared experts (it always has them)"),
            (m.post_norm, "a norm after the MoE layer (A.X K1's AXK1ForCausalLM has it)"),
        ]
    return [what for bad, what in checks if bad]


def flatten_mtp(sd: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """kfm's ``mtp.layers.{k}.*`` names as layer ``n_layers + k``: the block's keys as a layer's, the module's own
    tensors as ``layers.{n + k}.mtp_*``."""
    out = {}
    for key, value in sd.items():
        m = _MTP.match(key)
        if not m:
            out[key] = value
            continue
        k, rest = int(m.group(1)), m.group(2)
        layer = n_layers + k
        if rest.startswith("block."):
            out[f"layers.{layer}.{rest.removeprefix('block.')}"] = value
        else:
            out[f"layers.{layer}.mtp_{rest}"] = value
    return out


def nest_mtp(name: str, n_layers: int) -> str:
    """``flatten_mtp`` undone for one name."""
    m = _LAYER.match(name)
    if not m or int(m.group(1)) < n_layers:
        return name
    k, rest = int(m.group(1)) - n_layers, m.group(2)
    if rest.startswith("mtp_") and rest.removeprefix("mtp_").split(".")[0] in _OWN:
        return f"mtp.layers.{k}.{rest.removeprefix('mtp_')}"
    return f"mtp.layers.{k}.block.{rest}"


def mtp_copies(cfg: ModelConfig, embedding: torch.Tensor, head: torch.Tensor) -> dict[str, torch.Tensor]:
    """The per-module copies of the embedding and head, under their Hugging Face names."""
    out = {}
    for k in range(cfg.mtp.depth):
        prefix = f"model.layers.{cfg.n_layers + k}."
        out[prefix + MTP_COPIES[0]], out[prefix + MTP_COPIES[1]] = embedding, head
    return out


def is_mtp_copy(key: str, n_layers: int) -> bool:
    m = re.match(r"^model\.layers\.(\d+)\.(.+)$", key)
    return bool(m) and int(m.group(1)) >= n_layers and m.group(2) in MTP_COPIES


def deepseek_hf_config(cfg: ModelConfig, common: dict):
    """The ``DeepseekV3Config`` of ``cfg`` (``common``: the keys every class shares)."""
    import transformers

    m, a = cfg.moe, cfg.mla
    moe = dict(n_routed_experts=m.n_experts, num_experts_per_tok=m.top_k, moe_intermediate_size=m.expert_hidden_dim,
               n_shared_experts=m.n_shared_experts, routed_scaling_factor=m.routed_scaling_factor,
               n_group=m.n_group, topk_group=m.topk_group, norm_topk_prob=m.norm_topk_prob,
               first_k_dense_replace=m.first_k_dense) if m.n_experts else dict(
        n_routed_experts=1, num_experts_per_tok=1, moe_intermediate_size=1, n_shared_experts=1, n_group=1,
        topk_group=1, first_k_dense_replace=cfg.n_layers)  # dense: every layer before the first MoE layer
    return transformers.DeepseekV3Config(
        **common, **moe, kv_lora_rank=a.kv_lora_rank, q_lora_rank=a.q_lora_rank or None,
        qk_rope_head_dim=a.qk_rope_head_dim, qk_nope_head_dim=cfg.head_size - a.qk_rope_head_dim,
        v_head_dim=a.v_head_dim, rope_interleave=a.rope_interleave, attention_bias=False,
        num_mtp_layers=cfg.mtp.depth)


def deepseek_from_hf_config(hf_cfg) -> dict:
    """kfm's settings (beyond those every class shares) of a ``DeepseekV3Config``."""
    nope, rope = hf_cfg.qk_nope_head_dim, hf_cfg.qk_rope_head_dim
    out = {"head_dim": nope + rope, "mla": LatentAttentionConfig(
        kv_lora_rank=hf_cfg.kv_lora_rank, q_lora_rank=hf_cfg.q_lora_rank or 0, qk_rope_head_dim=rope,
        v_head_dim=hf_cfg.v_head_dim, rope_interleave=bool(getattr(hf_cfg, "rope_interleave", True))),
        "mtp": {"depth": int(getattr(hf_cfg, "num_mtp_layers", 0) or 0)}}
    first = hf_cfg.first_k_dense_replace
    if first < hf_cfg.num_hidden_layers:
        out["moe"] = MoEConfig(
            n_experts=hf_cfg.n_routed_experts, top_k=hf_cfg.num_experts_per_tok,
            expert_hidden_dim=hf_cfg.moe_intermediate_size, n_shared_experts=hf_cfg.n_shared_experts,
            first_k_dense=first, score_func="sigmoid", norm_topk_prob=bool(hf_cfg.norm_topk_prob),
            routed_scaling_factor=float(hf_cfg.routed_scaling_factor), n_group=hf_cfg.n_group or 1,
            topk_group=hf_cfg.topk_group or 1, expert_bias=True)
    return out
