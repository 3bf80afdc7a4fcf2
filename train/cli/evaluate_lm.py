"""Korean benchmarks on an exported model with lm-evaluation-harness (EleutherAI's ``lm_eval``).

    python -m kfm.train.cli.evaluate_lm [run_dir=runs/demo] [hf_dir=<run_dir>/hf] [tasks=[kobest,kmmlu,haerae,click]]
        [include_path=<folder of extra task YAMLs>] [limit=100] [num_fewshot=5]

The harness carries the Korean tasks: KoBEST (``kobest``: BoolQ, COPA, HellaSwag, SentiNeg, WiC), KMMLU
(``kmmlu``), HAE-RAE Bench (``haerae``) and CLIcK (``click``); their data come from the Hugging Face Hub
(or its cache). Results go to ``<hf_dir>/eval_results.json``, into the model card, and to wandb.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import hydra
from omegaconf import OmegaConf

from kfm.schemas import register_schemas
from kfm.train.cli import CONFIG_DIR
from kfm.train.provenance.report import CARD_BEGIN

log = logging.getLogger(__name__)
KOREAN_TASKS = ["kobest", "kmmlu", "haerae", "click"]


@dataclass
class EvalJob:
    """``python -m kfm.train.cli.evaluate_lm``."""

    run_dir: str = "runs/demo"
    hf_dir: str = "${run_dir}/hf"
    """An exported model (``python -m kfm.train.cli.export_hf``)."""
    tasks: list[str] = field(default_factory=lambda: list(KOREAN_TASKS))
    """lm-eval task or group names."""
    include_path: str = ""
    """A folder of extra task YAMLs (your own or local copies of benchmarks)."""
    num_fewshot: Optional[int] = None
    """Few-shot examples per prompt; None: each task's default."""
    limit: Optional[int] = None
    """Examples per task (a quick look); None: all."""
    batch_size: int = 8
    device: str = "auto"
    """``auto``: the first GPU if there is one, else the CPU."""
    wandb_mode: str = "offline"
    wandb_project: str = "kfm"

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("tasks is empty: name lm-eval tasks, e.g. tasks=[kobest,kmmlu]")
        if self.wandb_mode not in ("offline", "online", "disabled"):
            raise ValueError(f"wandb_mode must be offline, online or disabled, got {self.wandb_mode!r}")


def evaluate(job: EvalJob) -> dict:
    """Run the tasks; returns ``{task: {metric: value}}`` and writes the results next to the model."""
    import lm_eval
    import torch
    from lm_eval.tasks import TaskManager

    hf_dir = Path(job.hf_dir)
    if not (hf_dir / "config.json").is_file():
        raise FileNotFoundError(f"{hf_dir} holds no exported model: run `python -m kfm.train.cli.export_hf` first")
    manager = TaskManager(include_path=job.include_path or None)
    unknown = [t for t in job.tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(f"unknown lm-eval tasks {unknown}; check the names (`lm_eval ls tasks`) or give the folder "
                         "of their YAMLs with include_path=")
    device = job.device if job.device != "auto" else ("cuda:0" if torch.cuda.is_available() else "cpu")
    out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={hf_dir},dtype=float32", tasks=job.tasks,
                                  num_fewshot=job.num_fewshot, limit=job.limit, batch_size=job.batch_size,
                                  device=device, task_manager=manager)
    results = {task: {k.split(",")[0]: v for k, v in metrics.items()
                      if isinstance(v, (int, float)) and k.split(",")[0] not in ("alias", "sample_len")}
               for task, metrics in out["results"].items()}
    record = {"model": str(hf_dir), "tasks": job.tasks, "num_fewshot": job.num_fewshot, "limit": job.limit,
              "results": results, "versions": {k: str(v) for k, v in out.get("versions", {}).items()}}
    (hf_dir / "eval_results.json").write_text(json.dumps(record, indent=2, ensure_ascii=False))
    add_to_model_card(hf_dir / "README.md", results, job.limit)
    log_to_wandb(job, results)
    return results


def add_to_model_card(card: Path, results: dict, limit: int | None) -> None:
    if not card.is_file():
        return
    # Replace an earlier table (up to the next section or marked block, such as the provenance report).
    text = re.sub(r"\n+## lm-evaluation-harness.*?(?=\n## |\n<!-- |\Z)", "", card.read_text(), flags=re.S)
    rows = [f"| {task} | {metric} | {value:.4f} |" for task, metrics in sorted(results.items())
            for metric, value in sorted(metrics.items()) if not metric.endswith("_stderr")]
    note = f" (first {limit} examples per task)" if limit else ""
    section = (f"## lm-evaluation-harness{note}\n\n| task | metric | value |\n|---|---|---|\n" + "\n".join(rows)
               + "\n")
    head, marker, tail = text.partition(CARD_BEGIN)
    card.write_text(head.rstrip("\n") + "\n\n" + section + ("\n" + marker + tail if marker else ""))


def log_to_wandb(job: EvalJob, results: dict) -> None:
    if job.wandb_mode == "disabled":
        return
    import wandb

    run = wandb.init(project=job.wandb_project, dir=job.run_dir, mode=job.wandb_mode, job_type="eval",
                     name=f"{Path(job.run_dir).name}-eval", config={"tasks": job.tasks, "limit": job.limit})
    run.log({f"eval/{task}/{metric}": value for task, metrics in results.items() for metric, value in metrics.items()})
    run.finish()


register_schemas("evaluate_lm_job_schema")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate_lm")
def main(cfg) -> None:
    results = evaluate(OmegaConf.to_object(cfg))
    for task, metrics in results.items():
        log.info("%s: %s", task, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))


if __name__ == "__main__":
    main()
