"""The layout of the ranks (``trainer.parallelism``): which ranks hold one model replica together (tensor parallel)
and which hold replicas of each other (data parallel), checked against the world size and the model before any
process group starts.

Ranks are numbered pipeline-major, then data-parallel, then context-parallel:
rank = ((pp_index * dp + dp_index) * cp + cp_index) * tp + tp_index, so the ``tp`` ranks of a replica are neighbours (on one node, over NVLink, as Megatron-LM and torchtitan place them) and a
pipeline stage's ranks are a contiguous block. The data loader splits batches by
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
    pp: int = 1
    cp: int = 1

    @property
    def dp(self) -> int:
        """Data-parallel replicas: the ranks that read different samples."""
        return self.world // (self.tp * self.pp * self.cp)

    def dp_rank(self, rank: int) -> int:
        return (rank // (self.tp * self.cp)) % self.dp

    def cp_rank(self, rank: int) -> int:
        return (rank // self.tp) % self.cp

    def pp_rank(self, rank: int) -> int:
        return rank // (self.dp * self.cp * self.tp)

    @property
    def loss_ranks(self) -> int:
        """The ranks that compute a loss: all of them, or the last pipeline stage's."""
        return self.world // self.pp

    def tp_rank(self, rank: int) -> int:
        return rank % self.tp

    @property
    def efsdp(self) -> int:
        """The data-parallel ranks that shard one expert's weights (FSDP2): dp / ep."""
        return self.dp // self.ep


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def tp_limits(cfg: ModelConfig) -> dict[str, int]:
    """What a tensor-parallel degree must divide: the heads each rank computes whole, the feed-forward width, the
    vocabulary (the embedding and output rows)."""
    limits = {"model.n_heads": cfg.n_heads, "model.ffn_hidden_dim": cfg.ffn_hidden_dim,
              "model.vocab_size": cfg.vocab_size}
    if not cfg.mla.enabled:
        limits["model.n_kv_heads"] = cfg.n_kv_heads
    return limits


def valid_tps(cfg: ModelConfig, world: int) -> list[int]:
    """The tensor-parallel degrees ``cfg`` can run at on ``world`` ranks."""
    return [t for t in _divisors(world) if all(v % t == 0 for v in tp_limits(cfg).values())]


def check_layout(pc: ParallelismConfig, cfg: ModelConfig, world: int, seq_len: int | None = None) -> Layout:
    """The layout ``trainer.parallelism`` asks for on ``world`` ranks (training sequences of ``seq_len`` tokens);
    a ValueError naming the numbers and the layouts that would work otherwise."""
    world = check_pipeline_layout(pc, cfg, world)  # the ranks of one pipeline stage from here on
    check_context_layout(pc, cfg, world, seq_len)
    world //= pc.cp  # and of one context-parallel group's position
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
    return Layout(world * pc.pp * pc.cp, tp, check_expert_layout(pc, cfg, world // tp), pc.pp, pc.cp)


def check_context_layout(pc: ParallelismConfig, cfg: ModelConfig, world: int, seq_len: int | None) -> None:
    """``trainer.parallelism.cp`` against the ``world`` ranks and the sequence length."""
    cp = pc.cp
    if cp == 1:
        return
    why = ""
    if world % cp:
        why = f"cp={cp} does not divide the {world} ranks"
    elif pc.backend != Backend.fsdp2:
        why = (f"cp={cp}: DeepSpeed stays data-parallel (ZeRO) in kfm; " if pc.backend == Backend.deepspeed
               else f"cp={cp}: ") + "context parallelism runs with trainer.parallelism.backend=fsdp2"
    elif pc.tp > 1 or pc.pp > 1 or pc.ep > 1:
        why = f"cp={cp} with tp, pp or ep is not built yet: combine context parallelism with FSDP2 only"
    elif cfg.mtp.depth:
        why = (f"cp={cp}: multi-token prediction reads tokens past a rank's chunks; set model.mtp.depth=0 or "
               "cp=1")
    elif seq_len is not None and seq_len % (2 * cp):
        parts = 2 * cp
        why = (f"cp={cp}: loader.seq_len={seq_len} is not divisible by 2 x cp = {parts} (each rank takes two equal "
               f"chunks); use loader.seq_len={seq_len - seq_len % parts} or {seq_len + parts - seq_len % parts}")
    if why:
        raise ValueError(f"trainer.parallelism.{why}")


def check_pipeline_layout(pc: ParallelismConfig, cfg: ModelConfig, world: int) -> int:
    """``trainer.parallelism.pp`` against the model and the ``world`` ranks; the ranks of one stage."""
    pp, v = pc.pp, pc.pp_stages_per_rank
    if pp == 1 and v == 1:
        return world
    stages = pp * v
    if world % pp:
        fits = ", ".join(str(d) for d in _divisors(world) if cfg.n_layers % (d * v) == 0)
        raise ValueError(f"trainer.parallelism.pp={pp} does not divide the {world} ranks: use pp in {fits}")
    if cfg.n_layers % stages:
        fits = ", ".join(f"pp={d}" for d in _divisors(world) if cfg.n_layers % (d * v) == 0)
        raise ValueError(f"model.n_layers={cfg.n_layers} cannot be split into pp={pp} x pp_stages_per_rank={v} = "
                         f"{stages} stages of equal depth: on {world} ranks use {fits} (or another "
                         "pp_stages_per_rank)")
    why = {Backend.deepspeed: "DeepSpeed stays data-parallel (ZeRO) in kfm; use trainer.parallelism.backend=fsdp2",
           Backend.ddp: "combine pipeline parallelism with fsdp2, not ddp",
           Backend.hsdp: "combine pipeline parallelism with fsdp2 (hsdp x pp is not built yet)"}.get(pc.backend)
    if why is None and cfg.mtp.depth:
        why = (f"model {cfg.name!r} has multi-token prediction (model.mtp.depth={cfg.mtp.depth}), whose modules read "
               "the first stage's embedding on the last stage: not built yet; set model.mtp.depth=0 or pp=1")
    if why is None and cfg.moe.n_experts:
        why = f"the MoE layers of model {cfg.name!r} under pipeline parallelism are not built yet; use pp=1 and ep"
    if why is None and pc.pp_schedule == "interleaved_zb":
        why = ("pp_schedule=interleaved_zb (zero bubble) defers the weight gradients past FSDP2's reduction here: its "
               "losses left the one-process run's from the second step (6.5025 vs 6.4759); use interleaved_1f1b")
    if why is None and cfg.tie_embeddings:
        why = "tied embeddings live on the first and the last stage; set model.tie_embeddings=false or pp=1"
    if why is None and pc.sequence_parallel:
        why = "sequence parallelism across pipeline stages is not built yet; set sequence_parallel=false"
    if why:
        raise ValueError(f"trainer.parallelism.pp={pp}: {why}")
    return world // pp


def check_microbatches(pc: ParallelismConfig, microbatches: int) -> None:
    """A pipeline step's micro batches (the gradient-accumulation steps) against the schedule."""
    pp = pc.pp
    if pp > 1 and microbatches < pp:
        raise ValueError(f"trainer.parallelism.pp={pp} needs at least {pp} micro batches a step to keep every stage "
                         f"busy (the schedules refuse fewer), got {microbatches} (trainer.global_batch_size / "
                         "(local_batch_size x data-parallel ranks)): raise trainer.global_batch_size or lower "
                         "trainer.local_batch_size")
    rounds = max(1, microbatches // pp)
    if pc.pp_stages_per_rank > 1 and microbatches % rounds:
        raise ValueError(f"trainer.parallelism.pp_schedule={pc.pp_schedule.value} with pp={pp} needs the "
                         f"{microbatches} micro batches a step to be a multiple of {rounds} rounds; use a multiple "
                         f"of {pp}")


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
