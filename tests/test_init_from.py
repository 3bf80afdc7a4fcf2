"""Continued pretraining from a Hugging Face model, and depth up-scaling (SOLAR's recipe) as an initialiser."""

import pytest
import torch

from kfm.model import Transformer
from kfm.model.accounting import num_params
from kfm.train.hf.load import load_hf_checkpoint
from kfm.train.loop.init_from import depth_upscale, parse_layer_ranges
from tests.helpers import make_job, random_hf_model, read_metrics, run_distributed


@pytest.fixture()
def hf_dir(tmp_path):
    model = random_hf_model("exaone4")  # 4 layers, sliding-window pattern LLLG
    model.save_pretrained(str(tmp_path / "hf"), safe_serialization=True)
    return tmp_path / "hf"


def test_depth_upscaling_stacks_the_named_layer_ranges(hf_dir):
    cfg, sd = load_hf_checkpoint(hf_dir)
    layers = parse_layer_ranges("0-3,1-4", cfg.n_layers)
    assert layers == [0, 1, 2, 1, 2, 3]
    up_cfg, up_sd = depth_upscale(cfg, sd, layers)
    assert up_cfg.n_layers == 6 and up_cfg.layer_pattern == "LLLLLG"  # each copy keeps its source's attention kind
    model = Transformer(up_cfg)
    model.load_state_dict(up_sd)
    block = sum(v.numel() for k, v in sd.items() if k.startswith("layers.0."))
    assert num_params(up_cfg) == num_params(cfg) + 2 * block
    for new, src in enumerate(layers):
        for k, v in sd.items():
            if k.startswith(f"layers.{src}."):
                assert torch.equal(up_sd[f"layers.{new}." + k[len(f"layers.{src}."):]], v)
    for bad, match in (("0-5", "range 0-5 is outside the source's 4 layers"), ("2-1", "range 2-1"),
                       ("a-b", "each range is <first>-<end>")):
        with pytest.raises(ValueError, match=match):
            parse_layer_ranges(bad, 4)


def build_and_train(job):
    from kfm.train.loop.trainer import Trainer
    from kfm.train.parallel.distributed import init_distributed

    trainer = Trainer(job, init_distributed())
    start = trainer.engine.full_state_dict()
    trainer.fit()
    return start, job.model


def test_training_starts_from_the_up_scaled_hf_model(run_dir, hf_dir):
    job = make_job(run_dir, steps=6, init_from=str(hf_dir), init_layers="0-3,1-4")
    (start, model_cfg), _ = run_distributed(build_and_train, 2, job)
    cfg, sd = load_hf_checkpoint(hf_dir)
    _, expected = depth_upscale(cfg, sd, parse_layer_ranges("0-3,1-4", 4))
    assert model_cfg.n_layers == 6 and model_cfg.qk_norm and model_cfg.norm_placement == "post"
    for k, v in expected.items():
        assert torch.equal(start[k], v), k
    losses = read_metrics(run_dir, "train_loss")
    assert losses[-1] < losses[0]


def test_an_hf_model_with_another_vocabulary_is_refused(run_dir, tmp_path):
    import transformers

    cfg = transformers.LlamaConfig(vocab_size=800, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, architectures=["LlamaForCausalLM"])
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(str(tmp_path / "other"))
    job = make_job(run_dir, steps=2, init_from=str(tmp_path / "other"))
    with pytest.raises(RuntimeError, match=r"has a 800-token vocabulary but the shards in .* were tokenized with "
                                           r"768 pieces"):
        run_distributed(build_and_train, 1, job)
