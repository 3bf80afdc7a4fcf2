"""The layout of the ranks (``trainer.parallelism``): which ranks hold one model replica together (tensor parallel)
and which hold replicas of each other (data parallel), checked against the world size and the model before any
process group starts.

Ranks are numbered data-parallel-major: rank = dp_index * tp + tp_index, so the ``tp`` ranks of a replica are
neighbours (on one node, over NVLink, as Megatron-LM and torchtitan place them). The data loader splits batches by
the data-parallel index only: the ranks of one replica read the same samples. Expert parallelism (``ep``) splits
the data-parallel ranks further: groups of ``ep`` neighbouring data-parallel ranks hold one copy of the experts
between them (each reads its own samples), and FSDP2 shards the expert weights over the ``dp / ep`` groups.
"""

from __future__ import annotations

from dataclasses import dataclass

from kfm.model.config import ModelConfig
from kfm.train.config import Backend, ParallelismConfig


@dataclass(frozen=True)
class Layout:
    world: int
    tp: int = 1
    ep: int = 1

    @property
    def dp(self) -> int:
        """Data-parallel replicas: the ranks that read different samples."""
        return self.world // self.tp

    def dp_rank(self, rank: int) -> int:
        return rank // self.tp

    def tp_rank(self, rank: int) -> int:
        return rank % self.tp

    @property
    def efsdp(self) -> int:
        """The data-parallel ranks that shard one expert's weights (FSDP2): dp / ep."""
        return self.dp // self.ep


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def tp_limits(cfg: ModelConfig) -> dict[str, int]:
    """What a tensor-parallel degree must divide: the heads each rank computes whole, the feed-forward width."""
    limits = {"model.n_heads": cfg.n_heads, "model.ffn_hidden_dim": cfg.ffn_hidden_dim}
    if not cfg.mla.enabled:
        limits["model.n_kv_heads"] = cfg.n_kv_heads
    return limits


def valid_tps(cfg: ModelConfig, world: int) -> list[int]:
    """The tensor-parallel degrees ``cfg`` can run at on ``world`` ranks."""
    return [t for t in _divisors(world) if all(v % t == 0 for v in tp_limits(cfg).values())]


def check_layout(pc: ParallelismConfig, cfg: ModelConfig, world: int, seq_len: int | None = None) -> Layout:
    """The layout ``trainer.parallelism`` asks for on ``world`` ranks (training sequences of ``seq_len`` tokens);
    a ValueError naming the numbers and the layouts that would work otherwise."""
    tp = pc.tp
    ok = ", ".join(f"tp={t} (x{world // t} data parallel)" for t in valid_tps(cfg, world))
    if world % tp:
        raise ValueError(f"trainer.parallelism.tp={tp} does not divide the {world} ranks: valid on {world} ranks: "
                         f"{ok}")
    bad = [f"{key}={value}" for key, value in tp_limits(cfg).items() if value % tp]
    if bad:
        raise ValueError(f"trainer.parallelism.tp={tp} must divide {', '.join(bad)} (each rank computes whole heads "
                         f"and an equal part of the feed-forward layer): valid on {world} ranks: {ok}")
    if tp > 1:
        if pc.backend == Backend.deepspeed:
            raise ValueError(f"trainer.parallelism.tp={tp}: DeepSpeed stays data-parallel (ZeRO) in kfm; use "
                             "trainer.parallelism.backend=fsdp2 (or hsdp) for tensor parallelism")
        if pc.backend == Backend.ddp:
            raise ValueError(f"trainer.parallelism.tp={tp}: combine tensor parallelism with fsdp2 or hsdp, not ddp")
        if cfg.moe.n_experts:
            raise ValueError(f"trainer.parallelism.tp={tp}: the MoE layers of model {cfg.name!r} have no tensor-parallel "
                             "plan yet: train it with tp=1, its experts spread by trainer.parallelism.ep")
        if pc.backend == Backend.hsdp and pc.hsdp_replicas and (world // tp) % pc.hsdp_replicas:
            raise ValueError(f"trainer.parallelism.hsdp_replicas={pc.hsdp_replicas} does not divide the {world // tp} "
                             f"data-parallel ranks left by tp={tp}")
        if pc.sequence_parallel and seq_len is not None and seq_len % tp:
            raise ValueError(f"trainer.parallelism.sequence_parallel=true splits each sequence into tp={tp} equal parts: "
                             f"loader.seq_len={seq_len} is not divisible by {tp}; use loader.seq_len="
                             f"{seq_len - seq_len % tp} or {seq_len + tp - seq_len % tp}")
    return Layout(world, tp, check_expert_layout(pc, cfg, world // tp))


def check_expert_layout(pc: ParallelismConfig, cfg: ModelConfig, dp: int) -> int:
    """``trainer.parallelism.ep`` against the model and the ``dp`` data-parallel ranks."""
    ep = pc.ep
    if ep == 1:
        return ep
    experts = cfg.moe.n_experts
    if not experts:
        raise ValueError(f"trainer.parallelism.ep={ep}: model {cfg.name!r} has no mixture-of-experts layers; use ep=1")
    ok = [e for e in _divisors(dp) if experts % e == 0]
    if dp % ep or experts % ep:
        raise ValueError(f"trainer.parallelism.ep={ep} must divide the {dp} data-parallel ranks and "
                         f"model.moe.n_experts={experts}: use ep in {', '.join(map(str, ok))}")
    if pc.backend != Backend.fsdp2:
        raise ValueError(f"trainer.parallelism.ep={ep} runs with backend fsdp2 (expert weights sharded over the "
                         f"remaining data-parallel ranks), not {pc.backend.value}; set "
                         "trainer.parallelism.backend=fsdp2")
    return ep
