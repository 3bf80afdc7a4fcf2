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
    gpu: str = ""
    """The GPU model (what the layout planner, ``python -m kfm.train.plan``, reads the figures below for)."""
    gpu_memory_gb: float = 0.0
    """Memory of one GPU, GB (10^9 bytes), from the vendor's datasheet."""
    bf16_tflops: float = 0.0
    """Dense bf16 tensor-core peak of one GPU, TFLOP/s (without sparsity)."""
    fp8_tflops: float = 0.0
    """Dense FP8 peak of one GPU, TFLOP/s."""
    nvlink_gb_s: float = 0.0
    """NVLink bandwidth of one GPU in each direction, GB/s (half the datasheet's bidirectional figure)."""
    network_gb_s: float = 0.0
    """Network bandwidth of one GPU to other nodes in each direction, GB/s (its NIC's line rate / 8)."""

    def __post_init__(self) -> None:
        if self.gpus_per_node < 0 or self.procs_per_node < 0:
            raise ValueError("cluster.gpus_per_node and cluster.procs_per_node must be >= 0")
        figures = (self.gpu_memory_gb, self.bf16_tflops, self.fp8_tflops, self.nvlink_gb_s, self.network_gb_s)
        if min(figures) < 0:
            raise ValueError(f"cluster={self.name}: gpu_memory_gb, bf16_tflops, fp8_tflops, nvlink_gb_s and "
                             "network_gb_s must be >= 0")
        if self.gpus_per_node and self.procs_per_node > self.gpus_per_node:
            raise ValueError(f"cluster.procs_per_node={self.procs_per_node} exceeds cluster.gpus_per_node="
                             f"{self.gpus_per_node}: one process per GPU at most")

    @property
    def nproc_per_node(self) -> int:
        return self.procs_per_node or self.gpus_per_node or 1
