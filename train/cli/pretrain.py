"""Pretrain the model on the token shards.

    torchrun --nproc_per_node=2 -m kfm.train.cli.pretrain [run_dir=runs/demo] [model=debug] [trainer.steps=300] ...

Also runs as a single process (``python -m kfm.train.cli.pretrain``). On SIGUSR1 or SIGTERM it finishes
the step, writes a checkpoint and exits with status 75 (``EXIT_REQUEUE``): requeue the job, and
the next start resumes from that checkpoint.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
import torch.distributed as dist
from omegaconf import OmegaConf
from torch.distributed.elastic.multiprocessing.errors import record

from kfm.schemas import register_schemas
from kfm.train.cli import CONFIG_DIR
from kfm.train.config import PretrainJob
from kfm.train.loop.trainer import EXIT_REQUEUE, Trainer
from kfm.train.parallel.distributed import init_distributed
from kfm.train.parallel.layout import check_layout

register_schemas("pretrain_job_schema")


STOP_DIR_ENV = "KFM_STOP_DIR"
"""Set by scripts/slurm/pretrain.sbatch: after a signal-triggered checkpoint each rank writes ``rank_<N>``
(holding the requeue status, 75) there and exits 0, instead of exiting 75, which torchrun reports as a failure
with a traceback."""


@record  # under torchrun: this rank's traceback goes into the launcher's failure report (and the job log)
def train(job: PretrainJob) -> None:
    check_layout(job.trainer.parallelism, job.model, int(os.environ.get("WORLD_SIZE", 1)),  # before any group starts
                 job.loader.seq_len)
    info = init_distributed()
    if not info.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        trainer = Trainer(job, info)
        trainer.fit()
        dist.barrier()  # leave together: a rank tearing down its group while a peer is still in it can abort
    finally:
        dist.destroy_process_group()
    if trainer.preempted:
        stop_dir = os.environ.get(STOP_DIR_ENV)
        if stop_dir:  # kfm's sbatch script: it requeues when every rank says so here; exit 0 for a clean log
            Path(stop_dir).mkdir(parents=True, exist_ok=True)
            (Path(stop_dir) / f"rank_{info.rank}").write_text(f"{EXIT_REQUEUE}\n")
            return
        sys.exit(EXIT_REQUEUE)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="pretrain")
def main(cfg) -> None:
    train(OmegaConf.to_object(cfg))


if __name__ == "__main__":
    main()
