"""Mixture-of-experts models ↔ Hugging Face (Qwen3MoeForCausalLM, ExaoneMoeForCausalLM), both directions:
routing, shared experts, dense first layers and (EXAONE-MoE) the sliding-window pattern exercised; experts saved
per expert as the classes' checkpoints are, loaded back, logits and greedy tokens equal."""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from kfm.model import ModelConfig, Transformer
from kfm.model.config import MoEConfig
from kfm.train.cli.export_hf import export_checkpoint
from kfm.train.hf.convert import from_hf_config, hf_architecture, to_hf_config, to_hf_state_dict
from kfm.train.hf.load import hf_weight_tensors, load_hf_checkpoint
from tests.helpers import random_hf_moe, random_model, save_checkpoint

QWEN3_MOE = dict(n_experts=8, top_k=3, expert_hidden_dim=32, first_k_dense=1, score_func="softmax",
                 norm_topk_prob=True)
EXAONE_MOE = dict(n_experts=8, top_k=2, expert_hidden_dim=32, n_shared_experts=1, first_k_dense=1,
                  score_func="sigmoid", norm_topk_prob=True, routed_scaling_factor=2.5, n_group=4, topk_group=2,
                  expert_bias=True)


def moe_cfg(kind: str, **kw) -> ModelConfig:
    base = dict(vocab_size=768, dim=64, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=32, ffn_hidden_dim=96,
                max_seq_len=64, qk_norm=True, norm_eps=1e-6)
    if kind == "qwen3_moe":
        return ModelConfig(**base, moe=MoEConfig(**QWEN3_MOE), **kw)
    return ModelConfig(**base, moe=MoEConfig(**EXAONE_MOE), sliding_window=6, layer_pattern="LLLG",
                       rope_on_global_layers=False, **kw)


def random_moe_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
    m = random_model(cfg, seed)
    with torch.no_grad():
        for layer in m.layers:
            ffn = layer.feed_forward
            if getattr(ffn, "expert_bias", None) is not None:  # a bias that changes the choice
                ffn.expert_bias.copy_(torch.randn(cfg.moe.n_experts) * 0.05)
            if hasattr(ffn, "router"):  # router scores spread enough that the choice is not a near-tie
                ffn.router.weight.mul_(20)
    return m.eval()


@pytest.mark.parametrize("kind, arch", [("qwen3_moe", "Qwen3MoeForCausalLM"), ("exaone_moe", "ExaoneMoeForCausalLM")])
def test_export_logits_and_greedy_tokens_equal(kind, arch, tiny_tokenizer, tmp_path):
    cfg = moe_cfg(kind)
    assert hf_architecture(cfg) == arch
    m = random_moe_model(cfg, seed=1)
    out = export_checkpoint(save_checkpoint(m, cfg, tmp_path / "step_0000003", 3), tiny_tokenizer, tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["architectures"] == [arch]
    with safe_open(str(out / "model.safetensors"), "pt") as f:  # the published layout: one tensor per expert
        keys = set(f.keys())
    assert "model.layers.1.mlp.experts.7.gate_proj.weight" in keys
    assert "model.layers.0.mlp.gate_proj.weight" in keys  # the dense first layer
    assert not any("gate_up_proj" in k for k in keys)
    if kind == "exaone_moe":
        assert "model.layers.1.mlp.shared_experts.up_proj.weight" in keys
        assert "model.layers.3.mlp.e_score_correction_bias" in keys  # where save_pretrained puts it
    hf = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True).eval()
    x = torch.randint(3, cfg.vocab_size, (2, 40))
    with torch.no_grad():
        assert (hf(x).logits - m(x)).abs().max().item() < 1e-4
        prompt = x[:1, :8]
        ours = prompt
        for _ in range(20):
            ours = torch.cat([ours, m(ours)[:, -1].argmax(-1, keepdim=True)], dim=1)
        theirs = hf.generate(prompt, max_new_tokens=20, min_new_tokens=20, do_sample=False,
                             repetition_penalty=1.0, top_p=None, temperature=None)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("kind", ["qwen3_moe", "exaone_moe"])
def test_import_gives_the_same_logits_and_exports_back_unchanged(kind, tmp_path):
    hf = random_hf_moe(kind)
    hf.save_pretrained(str(tmp_path))
    cfg, sd = load_hf_checkpoint(tmp_path)
    assert cfg.moe.first_k_dense == 1 and cfg.moe.n_experts == 8
    if kind == "exaone_moe":
        assert (cfg.layer_pattern, cfg.sliding_window, cfg.moe.n_shared_experts) == ("LLLG", 6, 1)
        assert cfg.moe.expert_bias and not cfg.rope_on_global_layers
    m = Transformer(cfg)
    m.load_state_dict(sd)
    x = torch.randint(0, 768, (2, 33))
    with torch.no_grad():
        assert (hf(x).logits - m.eval()(x)).abs().max().item() < 1e-4
    back = to_hf_state_dict(m.state_dict(), cfg)
    for key, value in hf.state_dict().items():
        assert torch.equal(back[key], value), key
    assert from_hf_config(to_hf_config(cfg)) == cfg
    streamed = {n: t for names, t in hf_weight_tensors(tmp_path, cfg) for n in names}  # what provenance hashes
    assert streamed.keys() == m.state_dict().keys()


def test_an_incomplete_expert_set_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    random_hf_moe("qwen3_moe").save_pretrained(str(tmp_path))
    sd = load_file(str(tmp_path / "model.safetensors"))
    del sd["model.layers.2.mlp.experts.5.up_proj.weight"]
    save_file(sd, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"7 of the 8 experts of layer 2's up_proj \(missing \[5\]\)"):
        load_hf_checkpoint(tmp_path)


@pytest.mark.parametrize("change, message", [
    (dict(n_shared_experts=1), "Qwen3MoeForCausalLM lacks shared experts; ExaoneMoeForCausalLM lacks softmax routing"),
    (dict(score_func="sigmoid", n_group=2), "Qwen3MoeForCausalLM lacks sigmoid routing .*group-limited routing; "
                                            "ExaoneMoeForCausalLM lacks no shared experts"),
])
def test_an_export_target_lacking_a_feature_is_named(change, message):
    cfg = moe_cfg("qwen3_moe")
    cfg = ModelConfig.from_dict({**cfg.to_dict(), "moe": {**cfg.to_dict()["moe"], **change}})
    with pytest.raises(ValueError, match=message):
        hf_architecture(cfg)
