import os

import pytest

# Tests never touch a hub or the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import torch  # noqa: E402

# No GPU: Triton kernels run in its interpreter, on CPU tensors. With one, the kernel tests put their tensors on
# it (tests.helpers.KERNEL_DEVICE) and the kernels run compiled.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kfm.tokenizer.config import TextSource, TokenizerConfig  # noqa: E402
from kfm.tokenizer.train import train_tokenizer  # noqa: E402
from tests.helpers import build_tiny_shards, write_tiny_corpus  # noqa: E402

TINY_VOCAB = 768


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    return write_tiny_corpus(tmp_path_factory.mktemp("corpus"))


def _train_tiny(corpus, out, model_type):
    cfg = TokenizerConfig(
        sources=[TextSource(path=str(p)) for p in corpus.values()],
        vocab_size=TINY_VOCAB, ksx1001_hangul=False, sample_sentences=20_000, model_type=model_type,
        superword_fraction=0.1 if model_type == "bpe" else 0.0,
        heldout_fraction=0.4,  # at least every test's data.val_fraction (the build checks it)
    )
    train_tokenizer(cfg, out)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_corpus, tmp_path_factory):
    """A 768-piece BPE tokenizer (the default recipe) on the tiny corpus; its folder (SentencePiece + HF files)."""
    return _train_tiny(tiny_corpus, tmp_path_factory.mktemp("tokenizer"), "bpe")


@pytest.fixture(scope="session", params=["bpe", "unigram"])
def tiny_tokenizer_any(request, tiny_corpus, tmp_path_factory):
    """The tiny tokenizer for each supported SentencePiece algorithm."""
    return _train_tiny(tiny_corpus, tmp_path_factory.mktemp(f"tokenizer-{request.param}"), request.param)


@pytest.fixture()
def run_dir(tiny_corpus, tiny_tokenizer, tmp_path):
    """A fresh run directory with the tiny corpus built into shards under ``data/``."""
    build_tiny_shards(tiny_corpus, tiny_tokenizer, tmp_path / "data")
    return tmp_path


@pytest.fixture(scope="session")
def slurm():
    """The environment for client commands of a real Slurm with 2 emulated nodes on this host
    (scripts/ci/local_slurm.sh); skipped, and reported so, where Slurm is not installed and cannot be."""
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "KFM_SLURM_DIR": os.environ.get("KFM_SLURM_DIR", "/tmp/kfm-slurm")}
    script = Path(__file__).resolve().parents[1] / "scripts" / "ci" / "local_slurm.sh"
    up = subprocess.run(["bash", str(script), "up"], env=env, capture_output=True, text=True, timeout=300)
    if up.returncode == 3:
        pytest.skip(f"no Slurm here and it cannot be installed: {up.stderr.strip()}")
    assert up.returncode == 0, up.stderr
    conf = up.stdout.strip().split("=", 1)[1]
    return {**env, "SLURM_CONF": conf, "PYTHON": sys.executable}
