"""HF export: logits equal the stock classes; checkpoints of any backend export to a loadable directory."""

import json
from dataclasses import asdict

import pytest
import torch
import torch.distributed.checkpoint as dcp
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from kfm.model import Transformer
from kfm.train.checkpoint.layout import STATE_FILE
from kfm.train.cli.export_hf import export_checkpoint
from kfm.train.hf.convert import from_hf_config, from_hf_state_dict, to_hf_config, to_hf_state_dict
from tests.helpers import make_job, random_model, run_distributed, save_checkpoint, tiny_cfg, train_and_report


@pytest.mark.parametrize("tie", [False, True])
def test_hf_llama_gives_same_logits(tie):
    cfg = tiny_cfg(tie_embeddings=tie)
    m = random_model(cfg)
    hf = LlamaForCausalLM(to_hf_config(cfg)).eval()
    hf.load_state_dict(to_hf_state_dict(m.state_dict(), cfg), strict=not tie)
    x = torch.randint(0, cfg.vocab_size, (2, 37))
    with torch.no_grad():
        diff = (hf(x).logits - m(x)).abs().max().item()
    assert diff < 1e-4


def test_round_trip_from_hf():
    cfg = tiny_cfg()
    hf = LlamaForCausalLM(to_hf_config(cfg)).eval()
    assert from_hf_config(hf.config) == cfg
    m = Transformer(cfg)
    m.load_state_dict(from_hf_state_dict(hf.state_dict(), cfg))
    back = to_hf_state_dict(m.state_dict(), cfg)
    for k, v in hf.state_dict().items():
        assert torch.equal(back[k], v), k


def test_unknown_key_names_the_table():
    with pytest.raises(KeyError, match="KEY_MAP"):
        to_hf_state_dict({"layers.0.attention.bias": torch.zeros(1)}, tiny_cfg())


@pytest.mark.parametrize("tie", [False, True])
def test_export_from_checkpoint_loads_with_auto_classes(tiny_tokenizer, tmp_path, tie):
    cfg = tiny_cfg(tie_embeddings=tie)
    m = random_model(cfg, seed=3)
    ckpt = save_checkpoint(m, cfg, tmp_path / "step_0000005", 5)
    out = export_checkpoint(ckpt, tiny_tokenizer, tmp_path / "hf")
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.model",
                 "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert "<|im_start|>" in json.loads((out / "tokenizer_config.json").read_text())["chat_template"]
    hf = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    ids = tok("대한민국의 주권은 국민에게 있다.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert (hf(ids).logits - m(ids)).abs().max().item() < 1e-4
        gen = hf.generate(ids, max_new_tokens=5, do_sample=False)
    assert gen.shape[1] == ids.shape[1] + 5
    chat = tok.apply_chat_template([{"role": "user", "content": "안녕?"}], add_generation_prompt=True, tokenize=False)
    assert chat == "<s><|im_start|>user\n안녕?<|im_end|>\n<|im_start|>assistant\n"
    assert tok.model_max_length == cfg.max_seq_len


def test_export_rejects_vocab_mismatch(tiny_tokenizer, tmp_path):
    cfg = tiny_cfg(vocab_size=896)
    ckpt = tmp_path / "step_0000001"
    dcp.save({"model": random_model(cfg).state_dict()}, checkpoint_id=str(ckpt))
    (ckpt / STATE_FILE).write_text(json.dumps({"step": 1, "config": {"model": asdict(cfg)}}))
    with pytest.raises(ValueError, match="has 768 pieces but the checkpoint's model.vocab_size is 896"):
        export_checkpoint(ckpt, tiny_tokenizer, tmp_path / "hf")


@pytest.mark.parametrize("backend, extra", [("fsdp2", {}), ("deepspeed", {"zero_stage": 3})])
def test_a_two_rank_training_checkpoint_exports_to_transformers(run_dir, tiny_tokenizer, backend, extra):
    job = make_job(run_dir, steps=4, tie=True, parallelism={"backend": backend, **extra})
    (_, weights), _ = run_distributed(train_and_report, 2, job)
    out = export_checkpoint(run_dir / "checkpoints" / "step_0000004", tiny_tokenizer, run_dir / "hf")
    hf = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True).eval()
    model = Transformer(job.model).eval()
    model.load_state_dict(weights)
    x = torch.randint(0, job.model.vocab_size, (2, 21))
    with torch.no_grad():
        assert (hf(x).logits - model(x)).abs().max().item() < 1e-4
    card = (out / "README.md").read_text()
    assert "tokens seen: 1,024" in card  # 4 steps x 2 ranks x 4 sequences x 32 tokens
    assert f"backend {backend} on 2 ranks" in card and "held-out validation at step 4: loss" in card
    assert "bits/byte" in card and "random initialisation (seed 0)" in card


def test_a_consolidated_file_exports_and_a_checkpoint_without_weights_is_named(tiny_tokenizer, tmp_path):
    from kfm.train.cli.consolidate import consolidate

    cfg = tiny_cfg(tie_embeddings=True, qk_norm=True)  # a Qwen3
    m = random_model(cfg, seed=4)
    ckpt = tmp_path / "step_0000007"
    dcp.save({"model": m.state_dict()}, checkpoint_id=str(ckpt))
    (ckpt / STATE_FILE).write_text(json.dumps({"step": 7, "config": {"model": asdict(cfg)}}))
    flat = consolidate(ckpt, tmp_path / "model.safetensors")
    out = export_checkpoint(flat, tiny_tokenizer, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True).eval()
    assert hf.config.architectures == ["Qwen3ForCausalLM"]
    x = torch.randint(0, cfg.vocab_size, (1, 13))
    with torch.no_grad():
        assert (hf(x).logits - m(x)).abs().max().item() < 1e-4
    empty = tmp_path / "step_0000009"
    empty.mkdir()
    (empty / STATE_FILE).write_text(json.dumps({"step": 9, "config": {"model": asdict(cfg)}}))
    with pytest.raises(ValueError, match=r"checkpoint .*step_0000009 could not be read .*damaged: delete it to "
                                         r"resume from the previous one, step_0000007"):
        export_checkpoint(empty, tiny_tokenizer, tmp_path / "hf2")


def test_a_wrapped_per_rank_failure_is_named_by_its_real_cause(tmp_path):
    """DCP's CheckpointException holds (exception, traceback) pairs: the message names the exception."""
    from torch.distributed.checkpoint.api import CheckpointException

    from kfm.train.checkpoint.layout import damaged

    err = damaged(tmp_path / "step_0000003", CheckpointException("load", {0: (EOFError(), ["frame"])}))
    assert "(EOFError: a file ends early)" in str(err) and "tuple" not in str(err)
    assert "no earlier checkpoint to fall back to" in str(err) and "delete it" not in str(err)
