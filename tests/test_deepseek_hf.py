"""Latent-attention models ↔ Hugging Face ``DeepseekV3ForCausalLM`` both ways, group-limited routing exercised
(4 groups, 2 kept), dense first layer, shared expert, bias; multi-token prediction modules exported as the layers
after the last decoder layer (DeepSeek-V3's layout), equal to `transformers`' ``MtpModel`` on them, and back bit
for bit; the refusals of targets that cannot store a model."""

import json
import re

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from kfm.model import ModelConfig, Transformer
from kfm.model.config import MTPConfig
from kfm.model.rope import Rotary
from kfm.train.cli.export_hf import export_checkpoint
from kfm.train.hf.convert import from_hf_config, hf_architecture, to_hf_config, to_hf_state_dict
from kfm.train.hf.load import hf_weight_tensors, load_hf_checkpoint
from kfm.train.hf.moe import in_memory_layout
from tests.helpers import mla_model_cfg, random_model, save_checkpoint, spread_routers

MTP_OWN = {"enorm": "enorm", "hnorm": "hnorm", "eh_proj": "eh_proj", "shared_head.norm": "post_norm"}


def deepseek_model(mla=None, depth=2, seed=1) -> tuple[ModelConfig, Transformer]:
    cfg = mla_model_cfg(mla, moe={}, n_layers=3, vocab_size=768, mtp=MTPConfig(depth=depth))
    m = random_model(cfg, seed)
    with torch.no_grad():
        for module in m.modules():
            if getattr(module, "expert_bias", None) is not None:  # a bias that changes the choice
                module.expert_bias.copy_(torch.randn(cfg.moe.n_experts) * 0.05)
            if hasattr(module, "router"):  # scores spread enough that no choice is a near-tie
                module.router.weight.mul_(20)
    return cfg, m.eval()


def mtp_model_from_export(hf, out, cfg):
    """`transformers`' MtpModel on the exported layers (its own loader looks for DeepSeek-V3's layer 61 only)."""
    from transformers.modeling_layers import MtpModel

    mtp = MtpModel(hf, cfg.mtp.depth).eval()
    sd = {}
    with safe_open(str(out / "model-mtp.safetensors"), "pt") as f:  # experts stacked as the class holds them
        saved = [(key, f.get_tensor(key)) for key in f.keys()]
        for key, tensor in in_memory_layout(saved, cfg.moe.n_experts):
            layer, rest = re.match(r"model\.layers\.(\d+)\.(.+)", key).groups()
            k = int(layer) - cfg.n_layers
            own = next((MTP_OWN[p] for p in MTP_OWN if rest.startswith(p + ".")), None)
            if rest in ("embed_tokens.weight", "shared_head.head.weight"):
                continue
            sd[f"layers.{k}.{own}.weight" if own else f"layers.{k}.mtp_block.{rest}"] = tensor
    missing, unexpected = mtp.load_state_dict(sd, strict=False)
    assert not unexpected and set(missing) == {"embed_tokens.weight", "shared_head.weight"}  # the main model's
    return mtp


@pytest.mark.parametrize("mla", [{}, dict(rope_interleave=False, q_lora_rank=0)], ids=["interleaved", "half_split"])
def test_export_logits_greedy_tokens_and_mtp_modules_equal_transformers(mla, tiny_tokenizer, tmp_path):
    cfg, m = deepseek_model(mla, seed=1)
    assert hf_architecture(cfg) == "DeepseekV3ForCausalLM" and cfg.moe.n_group > cfg.moe.topk_group
    out = export_checkpoint(save_checkpoint(m, cfg, tmp_path / "step_0000003", 3), tiny_tokenizer, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["DeepseekV3ForCausalLM"] and config["num_nextn_predict_layers"] == 2
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert index["model.layers.3.eh_proj.weight"] == index["model.layers.4.embed_tokens.weight"] == \
        "model-mtp.safetensors"
    assert "model.layers.4.mlp.experts.7.up_proj.weight" in index and "model.layers.3.shared_head.norm.weight" in index
    assert "model.layers.1.mlp.experts.7.gate_proj.weight" in index  # per expert, as save_pretrained writes them

    hf = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True).eval()  # drops the MTP layers
    assert len(hf.model.layers) == 3
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

        mtp = mtp_model_from_export(hf, out, cfg)
        h, hh = m.hidden_states(x), hf.model(x).last_hidden_state
        rotary, positions = Rotary(m.rope_cos, m.rope_sin, None, 40), torch.arange(40).expand(2, -1)
        for k in range(cfg.mtp.depth):
            ahead = torch.cat([x[:, k + 1:], x.new_zeros(2, k + 1)], dim=1)
            h = m.mtp.layers[k](m.tok_embeddings(ahead), h, rotary, None)
            hh = mtp.forward_layer(k, hh, positions, None, input_ids=ahead)
            assert (m.output(h) - mtp._project_to_logits(hh))[:, : 40 - k - 1].abs().max().item() < 1e-4

    cfg_back, sd = load_hf_checkpoint(out)  # the MTP weights come back bit for bit
    assert cfg_back.mtp.depth == 2 and cfg_back.mla == cfg.mla and cfg_back.moe.n_group == 4
    assert sd.keys() == m.state_dict().keys()
    for key, value in m.state_dict().items():
        assert torch.equal(sd[key], value), key


def random_hf_deepseek():
    """A tiny DeepSeek-V3 model written as `transformers` users write one (no MTP weights in its files although the
    config's default promises one module); routers scaled up so that no choice is a near-tie."""
    import transformers

    c = transformers.DeepseekV3Config(
        vocab_size=512, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=4, kv_lora_rank=24, q_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16,
        v_head_dim=12, n_routed_experts=8, num_experts_per_tok=3, n_shared_experts=1, n_group=4, topk_group=2,
        first_k_dense_replace=1, max_position_embeddings=64, architectures=["DeepseekV3ForCausalLM"])
    torch.manual_seed(0)
    return spread_routers(AutoModelForCausalLM.from_config(c).eval())


def test_import_gives_the_same_logits_and_exports_back_unchanged(tmp_path):
    hf = random_hf_deepseek()
    hf.save_pretrained(str(tmp_path))
    cfg, sd = load_hf_checkpoint(tmp_path)
    assert cfg.mtp.depth == 0 and cfg.head_size == 24 and cfg.mla.v_head_dim == 12 and cfg.mla.rope_interleave
    assert (cfg.moe.first_k_dense, cfg.moe.n_group, cfg.moe.topk_group, cfg.moe.top_k) == (1, 4, 2, 3)
    m = Transformer(cfg)
    m.load_state_dict(sd)
    x = torch.randint(0, 512, (2, 33))
    with torch.no_grad():
        assert (hf(x).logits - m.eval()(x)).abs().max().item() < 1e-4
    back = to_hf_state_dict(m.state_dict(), cfg)
    for key, value in hf.state_dict().items():
        assert torch.equal(back[key], value), key
    assert from_hf_config(to_hf_config(cfg)) == cfg
    streamed = {n: t for names, t in hf_weight_tensors(tmp_path, cfg) for n in names}  # what provenance hashes
    assert streamed.keys() == m.state_dict().keys()


def test_a_dense_latent_attention_model_exports_as_deepseek_v3_with_every_layer_dense():
    cfg = mla_model_cfg()
    hf_cfg = to_hf_config(cfg)
    assert hf_cfg.first_k_dense_replace == cfg.n_layers and hf_cfg.num_mtp_layers == 0
    hf_cfg._attn_implementation = "eager"
    hf = AutoModelForCausalLM.from_config(hf_cfg).eval()
    m = random_model(cfg)
    hf.load_state_dict(to_hf_state_dict(m.state_dict(), cfg), strict=True)
    x = torch.randint(0, cfg.vocab_size, (2, 17))
    with torch.no_grad():
        assert (hf(x).logits - m(x)).abs().max().item() < 1e-4


def test_mtp_with_a_target_that_cannot_store_it_is_refused_naming_the_way_out(tiny_tokenizer, tmp_path):
    cfg = ModelConfig(vocab_size=768, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden_dim=96,
                      max_seq_len=64, mtp=MTPConfig(depth=1))
    m = random_model(cfg)
    ckpt = save_checkpoint(m, cfg, tmp_path / "step_0000001", 1)
    with pytest.raises(ValueError, match=r"model.mtp.depth=1: LlamaForCausalLM checkpoints cannot store multi-token "
                                         r"prediction modules .* drop_mtp=true"):
        export_checkpoint(ckpt, tiny_tokenizer, tmp_path / "hf")
    out = export_checkpoint(ckpt, tiny_tokenizer, tmp_path / "hf", drop_mtp=True)
    hf = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True).eval()
    x = torch.randint(3, 768, (1, 12))
    with torch.no_grad():
        assert (hf(x).logits - m(x)).abs().max().item() < 1e-4
    assert not (out / "model-mtp.safetensors").exists()


@pytest.mark.parametrize("change, message", [
    (dict(sliding_window=8, layer_pattern="LG"), "DeepseekV3ForCausalLM lacks sliding-window layers"),
    (dict(moe={"post_norm": True}), "a norm after the MoE layer"),
    (dict(moe={"score_func": "softmax"}), "softmax routing"),
])
def test_a_latent_attention_model_deepseek_v3_cannot_hold_is_named(change, message):
    raw = mla_model_cfg(moe={}).to_dict()
    for key, value in change.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) else value
    with pytest.raises(ValueError, match=message):
        hf_architecture(ModelConfig.from_dict(raw))
