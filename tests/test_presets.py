"""Every model preset: same parameter count as the `transformers` class it exports to (both on meta)."""

from pathlib import Path

import pytest
import torch
import yaml

from kfm.model import ModelConfig, Transformer
from kfm.model.accounting import num_params
from kfm.train.hf.convert import hf_architecture, to_hf_config

PRESETS = sorted((Path(__file__).resolve().parents[1] / "configs" / "model").glob("*.yaml"))
EXPECTED_ARCH = {"exaone4_32b_like": "Exaone4ForCausalLM", "qwen25_7b_like": "Qwen2ForCausalLM"}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_parameter_count_equals_transformers(path):
    from transformers import AutoModelForCausalLM

    cfg = ModelConfig.from_dict(yaml.safe_load(path.read_text()))
    assert cfg.name == path.stem
    assert hf_architecture(cfg) == EXPECTED_ARCH.get(cfg.name, "LlamaForCausalLM")
    with torch.device("meta"):
        ours = Transformer(cfg)
        hf = AutoModelForCausalLM.from_config(to_hf_config(cfg))
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in hf.parameters()) == num_params(cfg)


def test_seed_like_presets_have_the_published_sizes():
    sizes = {p.stem: num_params(ModelConfig.from_dict(yaml.safe_load(p.read_text()))) for p in PRESETS}
    assert round(sizes["exaone4_32b_like"] / 1e9, 1) == 32.0  # EXAONE 4.0 32B: 32.0B
    assert abs(sizes["qwen25_7b_like"] - 7.61e9) < 0.01e9  # Qwen2.5 7B: 7.61B
    assert round(sizes["hcx_seed_like_0_5b"] / 1e9, 2) == 0.57  # HyperCLOVA X SEED 0.5B: 0.57B
