"""A Hugging Face directory becomes a kfm checkpoint without a training step (issue 15 item 13)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from kfm.model import Transformer
from kfm.model.config import ModelConfig
from kfm.train.checkpoint.layout import read_state
from kfm.train.checkpoint.reader import load_model_weights
from kfm.train.cli.export_hf import export_checkpoint
from kfm.train.provenance.verify import verify
from tests.helpers import random_hf_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_an_imported_hf_model_exports_back_with_the_same_logits(arch, tiny_tokenizer, tmp_path):
    hf = random_hf_model(arch, seed=4)
    hf.save_pretrained(str(tmp_path / "source"), safe_serialization=True)
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "kfm.train.cli.import_checkpoint", f"hf_dir={tmp_path / 'source'}",
                           f"run_dir={run}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    ckpt = run / "imported" / "step_0000000"
    assert done.stdout.strip().endswith(str(ckpt))
    state = read_state(ckpt)
    assert state["step"] == 0 and state["weights_only"]
    model = Transformer(ModelConfig.from_dict(state["config"]["model"]))
    load_model_weights(ckpt, model)
    ids = torch.randint(0, 768, (2, 19), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(ids).logits
        assert (model.eval()(ids) - want).abs().max() < 1e-4
    out = export_checkpoint(ckpt, tiny_tokenizer, tmp_path / "hf")
    back = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True).eval()
    with torch.no_grad():
        assert (back(ids).logits - want).abs().max() < 1e-4
    report = verify(out, run)
    assert report.verified and not report.from_scratch, report.to_text()
    assert [env["record"]["kind"] for env in report.chain] == ["import", "checkpoint", "export"]
