"""Each supported architecture both ways: a random `transformers` model imports into kfm with equal logits,
and kfm exports to a directory `AutoModelForCausalLM` loads offline with equal logits and greedy tokens."""

import json

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM

from model import Transformer
from train.export_hf import export_model
from train.hf_convert import from_hf_config, to_hf_config
from train.import_hf import load_hf_checkpoint

SMALL = dict(vocab_size=768, hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=64, rms_norm_eps=1e-6)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}


def hf_config(name: str):
    """Tiny configs written the way `transformers` users write them (not derived from kfm's)."""
    if name == "llama":
        return transformers.LlamaConfig(**SMALL, num_hidden_layers=2, rope_parameters=LLAMA3_ROPE,
                                        architectures=["LlamaForCausalLM"])
    if name == "qwen2":
        return transformers.Qwen2Config(**SMALL, num_hidden_layers=2, tie_word_embeddings=True,
                                        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                                        architectures=["Qwen2ForCausalLM"])
    if name == "qwen3":
        return transformers.Qwen3Config(**SMALL, num_hidden_layers=2, head_dim=32, tie_word_embeddings=True,
                                        architectures=["Qwen3ForCausalLM"])
    return transformers.Exaone4Config(**SMALL, num_hidden_layers=4, sliding_window=6,
                                      layer_types=["sliding_attention"] * 3 + ["full_attention"],
                                      architectures=["Exaone4ForCausalLM"])


ARCHS = ["llama", "qwen2", "qwen3", "exaone4"]


def random_hf_model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(name)).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname or "bias" in pname:  # off their 1.0 / 0.0 init, so a mix-up shows
                p.uniform_(0.5, 1.5)
    return model


def greedy(model: Transformer, ids: torch.Tensor, n: int) -> torch.Tensor:
    for _ in range(n):
        ids = torch.cat([ids, model(ids)[:, -1:].argmax(-1)], dim=1)
    return ids


@pytest.mark.parametrize("name", ARCHS)
def test_a_random_transformers_model_imports_with_equal_logits(name, tmp_path):
    hf = random_hf_model(name)
    hf.save_pretrained(str(tmp_path), safe_serialization=True, max_shard_size="100KB")  # sharded, with an index
    assert (tmp_path / "model.safetensors.index.json").is_file()
    cfg, sd = load_hf_checkpoint(tmp_path)
    model = Transformer(cfg).eval()
    model.load_state_dict(sd)
    x = torch.randint(0, cfg.vocab_size, (2, 37))
    with torch.no_grad():
        assert (hf(x).logits - model(x)).abs().max().item() < 1e-4
    assert to_hf_config(cfg).architectures == hf.config.architectures
    assert from_hf_config(to_hf_config(cfg)) == cfg  # the config survives a round trip


@pytest.mark.parametrize("name", ARCHS)
def test_export_loads_in_transformers_with_equal_logits_and_greedy_tokens(name, tiny_tokenizer, tmp_path):
    hf = random_hf_model(name, seed=1)
    hf.save_pretrained(str(tmp_path / "src"), safe_serialization=True)
    cfg, sd = load_hf_checkpoint(tmp_path / "src")
    model = Transformer(cfg).eval()
    model.load_state_dict(sd)
    out = export_model(model, cfg, tiny_tokenizer, tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["architectures"] == hf.config.architectures
    loaded = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True).eval()
    prompt = torch.randint(4, cfg.vocab_size, (1, 9))
    with torch.no_grad():
        assert (loaded(prompt).logits - model(prompt)).abs().max().item() < 1e-4
        theirs = loaded.generate(prompt, max_new_tokens=20, do_sample=False, eos_token_id=None,
                                 repetition_penalty=1.0)
        ours = greedy(model, prompt, 20)
    assert theirs.shape[1] == prompt.shape[1] + 20
    assert torch.equal(theirs, ours)


def test_unsupported_architecture_and_missing_weights_are_named(tmp_path):
    gpt2 = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=1, n_head=2, architectures=["GPT2LMHeadModel"])
    gpt2.save_pretrained(str(tmp_path / "gpt2"))
    with pytest.raises(ValueError, match="architecture 'GPT2LMHeadModel' is not supported: kfm imports "
                                         "LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Exaone4ForCausalLM"):
        load_hf_checkpoint(tmp_path / "gpt2")
    hf_config("llama").save_pretrained(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=r"empty has no weights \(model.safetensors or "
                                                r"model.safetensors.index.json\); found \['config.json'\]"):
        load_hf_checkpoint(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        load_hf_checkpoint(tmp_path / "nowhere")
    biased = transformers.LlamaConfig(**SMALL, num_hidden_layers=1, attention_bias=True,
                                      architectures=["LlamaForCausalLM"])
    with pytest.raises(ValueError, match="LlamaForCausalLM checkpoint uses attention_bias"):
        from_hf_config(biased)
