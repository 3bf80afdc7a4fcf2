"""Process-group setup (the parallelism itself is in ``kfm.train.parallel.parallelize``)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the rendezvous of a one-process group, a launch plan, tests)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def init_distributed() -> DistInfo:
    """Join the process group torchrun set up (NCCL on GPUs, gloo on CPUs), or make a 1-process one."""
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if "RANK" in os.environ and "MASTER_ADDR" in os.environ:  # started by torchrun (or srun + env)
            dist.init_process_group(backend)
        else:
            dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
            # What torchrun would set; DeepSpeed reads it. (Not RANK: with RANK set, a second run in this
            # process, such as the next member of a Hydra sweep, would look launched by torchrun.)
            for key, value in (("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_WORLD_SIZE", "1")):
                os.environ.setdefault(key, value)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def all_reduce_sum(values: list, device: torch.device) -> list[float]:
    """Sums over the ranks of ``values`` (numbers or 0-d tensors already on ``device``), in one collective and
    one host synchronisation."""
    t = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device) for v in values])
    dist.all_reduce(t)
    return t.tolist()
