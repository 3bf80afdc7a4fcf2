"""Mixture-of-experts models ↔ Hugging Face: ``Qwen3MoeForCausalLM`` and ``ExaoneMoeForCausalLM``.

kfm keeps each MoE layer's experts as both classes hold them in memory: ``experts.w13`` is their
``mlp.experts.gate_up_proj`` (E, 2*hidden, dim: gate rows then up rows), ``experts.w2`` their
``mlp.experts.down_proj`` (E, dim, hidden). ``save_pretrained`` writes them per expert
(``mlp.experts.{j}.gate_proj.weight`` ...), the layout of the published checkpoints, and ``from_pretrained``
stacks them again (``transformers.conversion_mapping``, the ``qwen2_moe`` rules both classes use). Export goes
through the in-memory layout; import reads either layout from the safetensors files (``in_memory_layout``).

What each class can express (``moe_problems``): Qwen3-MoE routes by softmax, with no shared experts, expert bias,
expert groups or scaling factor, attention as Qwen3's (pre-norm, QK-norm, no window); EXAONE-MoE (K-EXAONE)
routes by sigmoid with the expert bias, groups, normalisation and scaling, has shared experts, pre-norm, QK-norm,
and RoPE on sliding-window layers only (its global layers never rotate).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import torch

from kfm.model.config import ModelConfig, MoEConfig

ROUTED_KEYS = {
    "layers.{i}.feed_forward.router.weight": "model.layers.{i}.mlp.gate.weight",
    "layers.{i}.feed_forward.experts.w13": "model.layers.{i}.mlp.experts.gate_up_proj",
    "layers.{i}.feed_forward.experts.w2": "model.layers.{i}.mlp.experts.down_proj",
}
SHARED_KEYS = {f"layers.{{i}}.feed_forward.shared.{w}.weight": f"model.layers.{{i}}.mlp.shared_experts.{p}.weight"
               for w, p in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj"))}
BIAS_KEYS = {"layers.{i}.feed_forward.expert_bias": "model.layers.{i}.mlp.gate.e_score_correction_bias"}
_SAVED_BIAS = re.compile(r"^model\.layers\.(\d+)\.mlp\.e_score_correction_bias$")
"""Where ``save_pretrained`` writes EXAONE-MoE's bias (``mlp.`` rather than ``mlp.gate.``, DeepSeek-V3's layout)."""
_PER_EXPERT = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


def moe_problems(cfg: ModelConfig, arch: str) -> list[str]:
    """What ``cfg`` uses that ``arch`` (one of the two classes) cannot express; empty when it exports."""
    m, hybrid = cfg.moe, "L" in cfg.layer_pattern
    common = [
        (not cfg.qk_norm, "attention without qk_norm"),
        (cfg.qkv_bias, "qkv_bias"),
        (cfg.norm_placement != "pre", "post-norm blocks"),
    ]
    if arch == "Qwen3MoeForCausalLM":
        checks = common + [
            (m.score_func != "softmax", f"{m.score_func} routing (it routes by softmax)"),
            (m.n_shared_experts > 0, "shared experts"),
            (m.expert_bias, "an expert bias (auxiliary-loss-free balancing)"),
            (m.n_group > 1, "group-limited routing"),
            (m.routed_scaling_factor != 1.0, "a routed scaling factor"),
            (hybrid, "sliding-window layers"),
        ]
    else:
        checks = common + [
            (m.score_func != "sigmoid", f"{m.score_func} routing (it routes by sigmoid)"),
            (m.n_shared_experts < 1, "no shared experts (it always has them)"),
            (m.n_experts // m.n_group < 2, "fewer than two experts per group"),
            (cfg.rope_on_global_layers, "RoPE on global layers (its global layers never rotate)"),
        ]
    return [what for bad, what in checks if bad]


def moe_architecture(cfg: ModelConfig) -> str:
    """The class a MoE config exports to; a ValueError naming, for each class, what it lacks."""
    found = {arch: moe_problems(cfg, arch) for arch in ("Qwen3MoeForCausalLM", "ExaoneMoeForCausalLM")}
    for arch, problems in found.items():
        if not problems:
            return arch
    lacks = "; ".join(f"{arch} lacks {', '.join(problems)}" for arch, problems in found.items())
    raise ValueError(f"no stock transformers MoE class can hold this model: {lacks}. Change the model.moe settings "
                     "to those of one class, or train without a Hugging Face export")


def in_memory_layout(items: Iterable[tuple[str, torch.Tensor]], n_experts: int
                     ) -> Iterator[tuple[str, torch.Tensor]]:
    """A saved checkpoint's tensors under the names and layouts the classes hold in memory: the expert bias moved
    back under ``mlp.gate.``, and the per-expert weights (``mlp.experts.{j}.gate_proj.weight`` ...) held until a
    layer's ``n_experts`` gate and up (or down) projections have come, then yielded stacked as ``gate_up_proj`` (or
    ``down_proj``). Files list a layer's tensors together, so about one layer's experts are held at a time."""
    waiting: dict[tuple[str, str], dict[int, torch.Tensor]] = {}

    def stacked(layer: str, proj: str) -> torch.Tensor:
        group = waiting.pop((layer, proj))
        if sorted(group) != list(range(n_experts)):
            raise ValueError(f"layer {layer} {proj}: expert indices {sorted(group)} are not 0..{n_experts - 1}")
        return torch.stack([group[j] for j in range(n_experts)])

    def complete(layer: str, proj: str) -> bool:
        return len(waiting.get((layer, proj), ())) == n_experts

    for key, value in items:
        m = _PER_EXPERT.match(key)
        if not m:
            yield _SAVED_BIAS.sub(r"model.layers.\1.mlp.gate.e_score_correction_bias", key), value
            continue
        layer, expert, proj = m.groups()
        waiting.setdefault((layer, proj), {})[int(expert)] = value
        prefix = f"model.layers.{layer}.mlp.experts."
        if proj == "down_proj" and complete(layer, proj):
            yield prefix + "down_proj", stacked(layer, proj)
        elif proj != "down_proj" and complete(layer, "gate_proj") and complete(layer, "up_proj"):
            yield prefix + "gate_up_proj", torch.cat([stacked(layer, "gate_proj"), stacked(layer, "up_proj")], dim=1)
    if waiting:
        (layer, proj), group = min(waiting.items(), key=lambda item: len(item[1]))
        raise ValueError(f"the checkpoint holds {len(group)} of the {n_experts} experts of layer {layer}'s {proj} "
                         f"(missing {sorted(set(range(n_experts)) - set(group))[:8]}): it is incomplete")


def saved_layout(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``in_memory_layout`` undone, for tensors written beside ``save_pretrained``'s (multi-token prediction
    layers): stacked experts split per expert, the bias under ``mlp.`` as ``save_pretrained`` writes it."""
    out = {}
    for key, value in tensors.items():
        if key.endswith(".mlp.experts.gate_up_proj"):
            prefix, half = key.removesuffix("gate_up_proj"), value.shape[1] // 2
            for j, w in enumerate(value):
                out[f"{prefix}{j}.gate_proj.weight"], out[f"{prefix}{j}.up_proj.weight"] = w[:half], w[half:]
        elif key.endswith(".mlp.experts.down_proj"):
            prefix = key.removesuffix("down_proj")
            out.update({f"{prefix}{j}.down_proj.weight": w for j, w in enumerate(value)})
        else:
            out[key.replace(".mlp.gate.e_score_correction_bias", ".mlp.e_score_correction_bias")] = value
    return out


def moe_hf_config(cfg: ModelConfig, arch: str, common: dict):
    """The ``transformers`` config of a MoE ``cfg`` (``common``: the keys every class shares)."""
    import transformers

    m = cfg.moe
    moe = dict(common, moe_intermediate_size=m.expert_hidden_dim, num_experts=m.n_experts,
               num_experts_per_tok=m.top_k, norm_topk_prob=m.norm_topk_prob, head_dim=cfg.head_size)
    if arch == "Qwen3MoeForCausalLM":
        return transformers.Qwen3MoeConfig(**moe, attention_bias=False, use_sliding_window=False,
                                           decoder_sparse_step=1, mlp_only_layers=list(range(m.first_k_dense)))
    layer_types = ["sliding_attention" if cfg.is_local(i) else "full_attention" for i in range(cfg.n_layers)]
    return transformers.ExaoneMoeConfig(
        **moe, num_shared_experts=m.n_shared_experts, routed_scaling_factor=m.routed_scaling_factor,
        n_group=m.n_group, topk_group=m.topk_group, first_k_dense_replace=m.first_k_dense,
        mlp_layer_types=["dense" if i < m.first_k_dense else "sparse" for i in range(cfg.n_layers)],
        sliding_window=cfg.sliding_window or 4096, layer_types=layer_types)


def moe_from_hf_config(hf_cfg, arch: str) -> dict:
    """kfm's ``model.moe`` (and attention) settings of a Qwen3-MoE or EXAONE-MoE ``transformers`` config."""
    layers = hf_cfg.num_hidden_layers
    if arch == "Qwen3MoeForCausalLM":
        dense = sorted(hf_cfg.mlp_only_layers or [])
        sparse_step = getattr(hf_cfg, "decoder_sparse_step", 1)
        if dense != list(range(len(dense))) or sparse_step != 1:
            raise ValueError(f"Qwen3MoeForCausalLM with dense layers {dense} and decoder_sparse_step={sparse_step}: "
                             "kfm's dense layers are the first ones (model.moe.first_k_dense), every later layer MoE")
        moe = MoEConfig(n_experts=hf_cfg.num_experts, top_k=hf_cfg.num_experts_per_tok,
                        expert_hidden_dim=hf_cfg.moe_intermediate_size, first_k_dense=len(dense),
                        score_func="softmax", norm_topk_prob=bool(hf_cfg.norm_topk_prob))
        return {"moe": moe, "qk_norm": True}
    kinds = list(hf_cfg.mlp_layer_types)
    first = kinds.index("sparse") if "sparse" in kinds else layers
    if kinds != ["dense"] * first + ["sparse"] * (layers - first):
        raise ValueError(f"ExaoneMoeForCausalLM with mlp_layer_types {kinds}: kfm's dense layers are the first ones")
    moe = MoEConfig(n_experts=hf_cfg.num_experts, top_k=hf_cfg.num_experts_per_tok,
                    expert_hidden_dim=hf_cfg.moe_intermediate_size, n_shared_experts=hf_cfg.num_shared_experts,
                    first_k_dense=first, score_func="sigmoid", norm_topk_prob=bool(hf_cfg.norm_topk_prob),
                    routed_scaling_factor=float(hf_cfg.routed_scaling_factor), n_group=hf_cfg.n_group,
                    topk_group=hf_cfg.topk_group, expert_bias=True)
    letters = ["L" if t == "sliding_attention" else "G" for t in hf_cfg.layer_types]
    return {"moe": moe, "qk_norm": True, "letters": letters, "sliding_window": hf_cfg.sliding_window,
            "rope_on_global_layers": False}
