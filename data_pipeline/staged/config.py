"""Configuration of the staged build (``python -m kfm.data_pipeline.staged``): the data config of the
one-machine build (``data.*``) plus how the work is split and where it runs (``build.*``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from kfm.data_pipeline.config import DataConfig

EXECUTORS = ("local", "slurm")


@dataclass
class SlurmConfig:
    """How each stage is submitted as a job array (``sbatch``)."""

    partition: str = ""
    """Partition; empty: the cluster's default."""
    cpus_per_task: int = 1
    """Cores per task (a task is one process)."""
    mem_gb: float = 4.0
    """Memory per task (``--mem``; 0: the partition's default); a task's peak grows with the corpus divided by
    ``build.dedup_buckets`` (docs/data_pipeline.md)."""
    time: str = "12:00:00"
    """Time limit per task."""
    sbatch_args: list[str] = field(default_factory=list)
    """Further ``sbatch`` options, e.g. ``["--account=ko-llm", "--qos=data"]``."""
    python: str = ""
    """The Python on the nodes; empty: the one running the submission."""

    def __post_init__(self) -> None:
        if self.cpus_per_task < 1 or self.mem_gb < 0:
            raise ValueError("build.slurm.cpus_per_task must be >= 1 and build.slurm.mem_gb >= 0")


@dataclass
class StagedConfig:
    """How the build is split into tasks and where they run."""

    tasks: int = 1
    """Tasks of each parallel stage (scan, buckets, write): at most this many processes at once."""
    dedup_buckets: int = 16
    """Buckets the exact keys and MinHash band hashes are sorted in; a bucket task holds about
    ``documents x (1 + bands) x 24 B / dedup_buckets`` in memory. Does not change the result."""
    executor: str = "local"
    """``local``: tasks as processes on this machine; ``slurm``: each stage as a job array."""
    workers: int = 2
    """Local executor: tasks run at once."""
    wait: bool = True
    """Slurm: wait until the build ends and report it (false: submit and return)."""
    keep_intermediate: bool = False
    """Keep the scanned documents and dedup lists after the manifest is written."""
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    def __post_init__(self) -> None:
        if self.tasks < 1 or self.dedup_buckets < 1 or self.workers < 1:
            raise ValueError("build.tasks, build.dedup_buckets and build.workers must be >= 1")
        if self.executor not in EXECUTORS:
            raise ValueError(f"build.executor must be one of {EXECUTORS}, got {self.executor!r}")


@dataclass
class StagedBuildJob:
    """``python -m kfm.data_pipeline.staged``."""

    run_dir: str = "runs/demo"
    """Shards go to ``<run_dir>/data``; the build's work (markers, logs, intermediate files) to ``work_dir``."""
    tokenizer_model: str = "${run_dir}/tokenizer/tokenizer.model"
    """SentencePiece model used to tokenize."""
    work_dir: str = "${run_dir}/data_build"
    """Markers, logs and intermediate files; on a cluster, a folder every node sees."""
    action: str = "run"
    """``run``: run (or resume) the build; ``status``: report what is done, failed and left."""
    data: DataConfig = field(default_factory=DataConfig)
    build: StagedConfig = field(default_factory=StagedConfig)

    def __post_init__(self) -> None:
        if self.action not in ("run", "status"):
            raise ValueError(f"action must be 'run' or 'status', got {self.action!r}")
