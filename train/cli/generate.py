"""Load an exported Hugging Face directory with ``transformers`` (offline) and continue a prompt.

    python -m kfm.train.cli.generate [hf_dir=runs/demo/hf] [prompt="대한민국의 주권은"]
"""

from __future__ import annotations

from dataclasses import dataclass

import hydra
import torch
from omegaconf import OmegaConf

from kfm.schemas import register_schemas
from kfm.train.cli import CONFIG_DIR


@dataclass
class GenerateJob:
    """``python -m kfm.train.cli.generate``."""

    run_dir: str = "runs/demo"
    hf_dir: str = "${run_dir}/hf"
    prompt: str = "대한민국의 주권은"
    max_new_tokens: int = 48
    seed: int = 0


def generate(hf_dir: str, prompt: str, max_new_tokens: int, seed: int) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, local_files_only=True).eval()
    torch.manual_seed(seed)
    inputs = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens)
    return tok.decode(out[0], skip_special_tokens=True)


register_schemas("generate_job_schema")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="generate")
def main(cfg) -> None:
    job: GenerateJob = OmegaConf.to_object(cfg)
    print(generate(job.hf_dir, job.prompt, job.max_new_tokens, job.seed))


if __name__ == "__main__":
    main()
