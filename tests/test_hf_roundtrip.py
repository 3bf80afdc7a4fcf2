"""Each supported architecture both ways: a random `transformers` model imports into kfm with equal logits,
and kfm exports to a directory `AutoModelForCausalLM` loads offline with equal logits and greedy tokens."""

import json

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM

from kfm.model import Transformer
from kfm.train.hf.convert import from_hf_config, to_hf_config
from kfm.train.hf.export import export_model
from kfm.train.hf.load import load_hf_checkpoint
from tests.helpers import SMALL, hf_config, random_hf_model

ARCHS = ["llama", "qwen2", "qwen3", "exaone4"]


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
