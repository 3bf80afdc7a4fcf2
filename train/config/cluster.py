"""Where a job runs (``cluster.*``; ``configs/cluster/``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ClusterConfig:
    """Where the job runs; read by ``python -m kfm.train.cli.launch`` in ``scripts/slurm/pretrain.sbatch``."""

    name: str = "local_cpu"
    gpus_per_node: int = 0
    """GPUs per node the job uses; 0: CPU processes (gloo)."""
    procs_per_node: int = 0
    """Training processes per node; 0: one per GPU, or 1 without GPUs."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment of the training processes (NCCL / InfiniBand settings); a variable already set wins."""

    def __post_init__(self) -> None:
        if self.gpus_per_node < 0 or self.procs_per_node < 0:
            raise ValueError("cluster.gpus_per_node and cluster.procs_per_node must be >= 0")
        if self.gpus_per_node and self.procs_per_node > self.gpus_per_node:
            raise ValueError(f"cluster.procs_per_node={self.procs_per_node} exceeds cluster.gpus_per_node="
                             f"{self.gpus_per_node}: one process per GPU at most")

    @property
    def nproc_per_node(self) -> int:
        return self.procs_per_node or self.gpus_per_node or 1
