"""Where training metrics go: the log, a JSONL file, and wandb (offline by default)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger("kfm.train")


class MetricsSink:
    """Rank 0 only: writes every record to ``metrics.jsonl`` and to wandb, and logs a summary line."""

    def __init__(self, run_dir: Path, config: dict, wandb_mode: str, project: str, group: str = "") -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self._file = (run_dir / "metrics.jsonl").open("a", encoding="utf-8")
        self._wandb = None
        if wandb_mode != "disabled":
            import wandb

            self._wandb = wandb.init(project=project, dir=str(run_dir), mode=wandb_mode, config=config,
                                     name=run_dir.name, group=group or None, resume="allow")

    def log(self, step: int, metrics: dict) -> None:
        self._file.write(json.dumps({"step": step, **metrics}) + "\n")
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)
        log.info("step %5d | %s", step, " | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                  for k, v in metrics.items()))

    def close(self) -> None:
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()
