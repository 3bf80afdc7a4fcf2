"""An export loads with its RoPE theta and scaling under the oldest transformers pyproject.toml allows
(issue 15 item 4): transformers 4.x reads ``rope_theta``/``rope_scaling``, 5.x ``rope_parameters``."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from kfm.model.config import RopeConfig
from kfm.train.cli.export_hf import export_checkpoint
from kfm.train.hf.convert import TRANSFORMERS4_FLOOR
from tests.helpers import random_model, save_checkpoint, tiny_cfg

ROOT = Path(__file__).resolve().parents[1]
# transformers 4.54.0 with the hub and tokenizers releases it was made for (its own pins)
FLOOR_PACKAGES = [f"transformers=={TRANSFORMERS4_FLOOR}", "huggingface_hub==0.34.4", "tokenizers==0.21.4"]


def test_pyproject_states_the_floor():
    assert f'"transformers>={TRANSFORMERS4_FLOOR.rsplit(".0", 1)[0]}"' in (ROOT / "pyproject.toml").read_text()


@pytest.fixture(scope="session")
def transformers_floor():
    """A folder holding transformers at the floor (pip from the package registry, cached next to the venv)."""
    target = Path(sys.prefix) / "cache" / f"transformers-{TRANSFORMERS4_FLOOR}"
    if not (target / "transformers" / "__init__.py").is_file():
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                               str(target), *FLOOR_PACKAGES], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"could not install {FLOOR_PACKAGES} from the registry:\n{done.stderr[-2000:]}"
    return target


LOAD = textwrap.dedent("""
    import sys
    # transformers 4.x imports HF's `kernels` package when installed; the one transformers 5.25+ brings into
    # the venv needs a newer huggingface_hub than 4.54's: load the floor without it, as its own users would.
    sys.modules["kernels"] = None
    import torch, transformers
    from transformers import AutoModelForCausalLM
    assert transformers.__version__ == sys.argv[2], transformers.__version__
    hf = AutoModelForCausalLM.from_pretrained(sys.argv[1], local_files_only=True).eval()
    ids = torch.load(sys.argv[3])
    with torch.no_grad():
        torch.save(hf(ids).logits, sys.argv[4])
    print("theta", hf.config.rope_theta, "scaling", hf.config.rope_scaling)
""")


@pytest.mark.parametrize("rope", [RopeConfig(theta=500000.0),
                                  RopeConfig(theta=1e6, scaling="llama3", factor=8.0, original_max_seq_len=16)])
def test_export_loads_theta_and_scaling_under_the_floor(transformers_floor, tiny_tokenizer, tmp_path, rope):
    cfg = tiny_cfg(rope=rope)
    m = random_model(cfg, seed=5)
    out = export_checkpoint(save_checkpoint(m, cfg, tmp_path / "step_0000001", 1), tiny_tokenizer, tmp_path / "hf")
    ids = torch.randint(0, cfg.vocab_size, (1, 48), generator=torch.Generator().manual_seed(0))
    torch.save(ids, tmp_path / "ids.pt")
    env = {"PYTHONPATH": str(transformers_floor), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", LOAD, str(out), TRANSFORMERS4_FLOOR, str(tmp_path / "ids.pt"),
                           str(tmp_path / "logits.pt")], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"theta {rope.theta}" in done.stdout
    with torch.no_grad():
        diff = (torch.load(tmp_path / "logits.pt") - m(ids)).abs().max().item()
    assert diff < 1e-4, f"logits under transformers {TRANSFORMERS4_FLOOR} differ by {diff}"
