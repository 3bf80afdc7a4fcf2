"""The launch plan of one Slurm job, checked before anything starts, printed as shell assignments.

    eval "$(python -m kfm.train.cli.launch cluster=h100_node run_dir=... [other pretrain overrides])"

``scripts/slurm/pretrain.sbatch`` runs this on the batch host with the same Hydra overrides as the
training, so a bad config fails here, in seconds, with the message in the job log. It checks that
it runs inside a Slurm allocation, that the node has the GPUs the cluster profile names and that the parallel layout
(``trainer.parallelism``) fits the allocation's ranks, then
prints ``NNODES``, ``NPROC_PER_NODE``, ``MASTER_ADDR``, ``MASTER_PORT``, ``RDZV_ID`` and ``RUN_DIR``
and ``export`` lines for the profile's environment (variables already set are kept).
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys

import hydra
from omegaconf import OmegaConf

from kfm.schemas import register_schemas
from kfm.train.cli import CONFIG_DIR
from kfm.train.config import ClusterConfig, PretrainJob
from kfm.train.parallel.distributed import free_port
from kfm.train.parallel.layout import check_layout, check_microbatches

REQUIRED_SLURM = ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_NNODES")


class LaunchError(RuntimeError):
    pass


def visible_gpus(environ: dict[str, str]) -> int:
    """GPUs on this node: Slurm's count for the job if set, else what CUDA sees."""
    if environ.get("SLURM_GPUS_ON_NODE", "").isdigit():
        return int(environ["SLURM_GPUS_ON_NODE"])
    import torch

    return torch.cuda.device_count()


def first_host(nodelist: str) -> str:
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return out.stdout.split()[0]


def launch_plan(cluster: ClusterConfig, run_dir: str, environ: dict[str, str], gpus: int) -> dict[str, str]:
    missing = [v for v in REQUIRED_SLURM if not environ.get(v)]
    if missing:
        raise LaunchError(f"{', '.join(missing)} not set: this script runs inside a Slurm allocation. Submit it "
                          "with `sbatch scripts/slurm/pretrain.sbatch ...`; outside Slurm use "
                          "`torchrun --nproc_per_node=N -m kfm.train.cli.pretrain ...`")
    if cluster.gpus_per_node > gpus:
        raise LaunchError(f"cluster={cluster.name} uses cluster.gpus_per_node={cluster.gpus_per_node} but this node "
                          f"({environ.get('SLURMD_NODENAME', socket.gethostname())}) has {gpus}: request them with "
                          f"`sbatch --gpus-per-node={cluster.gpus_per_node}`, or pick the profile of this partition "
                          f"(cluster.gpus_per_node={gpus})")
    master = first_host(environ["SLURM_JOB_NODELIST"])
    return {
        "NNODES": environ["SLURM_NNODES"],
        "NPROC_PER_NODE": str(cluster.nproc_per_node),
        "MASTER_ADDR": master,
        "MASTER_PORT": environ.get("MASTER_PORT") or str(free_port(master)),
        # A requeued job keeps its id; the restart count keeps each attempt's rendezvous apart.
        "RDZV_ID": f"{environ['SLURM_JOB_ID']}.{environ.get('SLURM_RESTART_COUNT', '0')}",
        "RUN_DIR": run_dir,
    }


def check_allocation_layout(job: PretrainJob, nnodes: int) -> None:
    """The parallel layout of ``job`` (``trainer.parallelism``) against the allocation: the world size is
    ``nnodes`` x ``cluster.nproc_per_node``, and a replica's tensor-parallel ranks share a node (NVLink), so ``tp``
    divides the processes of a node."""
    per_node, tp = job.cluster.nproc_per_node, job.trainer.parallelism.tp
    if per_node % tp:
        fits = ", ".join(str(t) for t in range(1, per_node + 1) if per_node % t == 0)
        raise LaunchError(f"trainer.parallelism.tp={tp} does not divide the {per_node} processes of a node "
                          f"(cluster={job.cluster.name}): a replica's tensor-parallel ranks must share a node; use "
                          f"tp in {fits}")
    tc = job.trainer
    try:
        layout = check_layout(tc.parallelism, job.model, nnodes * per_node, job.loader.seq_len)
        check_microbatches(tc.parallelism, max(tc.global_batch_size // (tc.local_batch_size * layout.dp), 1))
    except ValueError as err:
        raise LaunchError(f"{err} (the allocation: {nnodes} nodes x {per_node} processes)") from None


def shell_lines(plan: dict[str, str], env: dict[str, str], environ: dict[str, str]) -> list[str]:
    lines = [f"{k}={shlex.quote(v)}" for k, v in plan.items()]
    lines += [f"export {k}={shlex.quote(environ.get(k, v))}" for k, v in env.items()]
    return lines


register_schemas("pretrain_job_schema")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="pretrain")
def main(cfg) -> None:
    job: PretrainJob = OmegaConf.to_object(cfg)
    environ = dict(os.environ)
    try:
        plan = launch_plan(job.cluster, job.run_dir, environ, visible_gpus(environ) if job.cluster.gpus_per_node else 0)
        check_allocation_layout(job, int(plan["NNODES"]))
    except LaunchError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print("\n".join(shell_lines(plan, job.cluster.env, environ)))


if __name__ == "__main__":
    main()
