"""Per-GPU memory, communication and step time of one parallel layout (``Candidate``) for a model on a cluster.

Memory of the busiest pipeline rank, in the order it is held:

The peak comes where the backward starts: every activation is still held and the step's sharded gradients do not
exist yet (they are freed after each optimizer step and appear as the activations are released). At that moment:

- **states**: the rank's share of the parameters in fp32 and AdamW's two moments: 12 bytes a parameter, after
  tensor parallelism (the matrices of a block, the embedding and output projection by vocabulary rows; the norms
  stay whole), pipeline stages, expert parallelism (routed experts) and FSDP2 sharding (over data x context
  ranks; routed experts over the ``dp x cp / ep`` ranks left);
- **gathered**: FSDP2's unsharded copies in the compute dtype: the root's embedding, norm and output projection
  (kept from forward to backward) and the block whose backward starts;
- **gradients**: with more than one micro batch a step, the unsharded gradients FSDP2 accumulates (in the compute
  dtype) until the last micro batch's reduce-scatter;
- **activations**: what each block keeps for the backward per token, read off kfm's code on the meta device
  (``kfm.train.plan.activations``) for the kernel path (``fused`` on a GPU, ``torch`` on CPU), times the tokens of
  a micro batch; with activation checkpointing only a checkpointed block's input, plus one block recomputed; with
  sequence parallelism the norms' share divided by ``tp``; with context parallelism the gathered keys and values;
  times the micro batches a pipeline rank holds at once (1F1B: pp - rank; GPipe: all; interleaved: torch's warm-up
  count);
- **loss**: the chunked cross-entropy's saved input gradient and fp32 output-projection gradient (the rank's
  vocabulary rows), and one chunk of fp32 logits.

Communication per step by mesh dimension (bytes a rank sends): FSDP2 all-gathers in forward and backward of every
micro batch and one fp32 reduce-scatter; 4 all-reduces a block per micro batch under ``tp``; dispatch and combine
(forward and backward) under ``ep``; key/value all-gathers under ``cp``; activations and their gradients
between stages under ``pp``. Time: model FLOPs (3x the forward, +1 forward for full recomputation) at an assumed
fraction of the dense bf16 peak, plus the exposed communication (tensor, expert and context collectives are
counted in full, FSDP2's as far as it exceeds the compute it overlaps with) and the pipeline bubble
((pp - 1) / (micro batches x stages a rank) of the compute).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kfm.model.accounting import _block_params, flops_per_token
from kfm.model.config import ModelConfig
from kfm.model.kernels.linear_cross_entropy import LOGITS_PER_CHUNK, LOGITS_PER_CHUNK_CUDA
from kfm.train.plan.activations import block_bytes_per_token, norm_bytes_per_token

GiB = 2**30


@dataclass(frozen=True)
class Candidate:
    """A layout: ``dp`` data-parallel replicas x ``cp`` x ``pp`` stages (``v`` a rank) x ``tp``; routed experts over
    ``ep`` of the data-parallel ranks; micro batches of ``micro`` sequences; activation checkpointing ``ac``."""

    dp: int
    tp: int = 1
    pp: int = 1
    ep: int = 1
    cp: int = 1
    v: int = 1
    micro: int = 1
    ac: str = "none"
    sp: bool = False

    @property
    def world(self) -> int:
        return self.dp * self.tp * self.pp * self.cp

    def name(self) -> str:
        parts = [f"dp{self.dp}"] + [f"{k}{n}" for k, n in (("tp", self.tp), ("pp", self.pp), ("ep", self.ep),
                                                          ("cp", self.cp)) if n > 1]
        if self.v > 1:
            parts.append(f"v{self.v}")
        return "x".join(parts) + ("+sp" if self.sp else "") + f" mb{self.micro} ac={self.ac}"


@dataclass
class Hardware:
    """A GPU and its links (``cluster.*``): memory, dense bf16 peak, per-GPU bandwidth in each direction over
    NVLink and the network, GPUs a node."""

    memory_gb: float
    bf16_tflops: float
    nvlink_gb_s: float
    network_gb_s: float
    gpus_per_node: int


@dataclass
class Estimate:
    candidate: Candidate
    memory: dict[str, float] = field(default_factory=dict)
    """Bytes of the busiest rank by kind: states, gathered, activations, loss."""
    comm: dict[str, float] = field(default_factory=dict)
    """Bytes a rank sends per step by mesh dimension."""
    step_s: float = 0.0
    tokens_per_s_per_gpu: float = 0.0
    microbatches: int = 0

    @property
    def memory_bytes(self) -> float:
        return sum(self.memory.values())


def _routed(cfg: ModelConfig, layer: int) -> int:
    m = cfg.moe
    return 3 * cfg.dim * m.expert_hidden_dim * m.n_experts if cfg.is_moe(layer) else 0


def stage_of_layers(n_layers: int, stages: int) -> list[range]:
    """Consecutive runs of layers, as equal as possible (the first stages one longer when they cannot be)."""
    base, extra = divmod(n_layers, stages)
    out, start = [], 0
    for s in range(stages):
        size = base + (1 if s < extra else 0)
        out.append(range(start, start + size))
        start += size
    return out


def rank_layers(cfg: ModelConfig, c: Candidate, rank: int) -> list[int]:
    stages = stage_of_layers(cfg.n_layers, c.pp * c.v)
    return [layer for s in range(rank, c.pp * c.v, c.pp) for layer in stages[s]]


def in_flight(c: Candidate, rank: int, microbatches: int, schedule: str) -> float:
    """Micro batches of one stage's activations pipeline rank ``rank`` holds at its peak."""
    if c.pp == 1:
        return 1.0
    if schedule == "gpipe":
        return float(microbatches)
    if c.v == 1:
        return float(min(microbatches, c.pp - rank))
    per_round = microbatches // max(1, microbatches // c.pp)
    warmup = (c.v - 1) * per_round + 2 * (c.pp - 1 - rank)
    return min(warmup + 1, microbatches * c.v) / c.v  # chunks of 1/v of the rank's layers


def estimate(cfg: ModelConfig, c: Candidate, hw: Hardware, seq: int, global_tokens: int, param_bytes: int = 2,
             kernels: str = "fused", efficiency: float = 0.4, schedule: str = "1f1b",
             ac_every: int = 2) -> Estimate:
    """Memory of the busiest rank, communication and step time of ``c`` (see the module docstring)."""
    seqs = max(global_tokens // seq, 1)
    microbatches = max(seqs // (c.dp * c.micro), 1)
    dtype = torch.bfloat16 if param_bytes == 2 else torch.float32
    shard, eshard = c.dp * c.cp, max(c.dp * c.cp // c.ep, 1)
    emb = cfg.vocab_size * cfg.dim
    tokens = c.micro * seq // c.cp  # a rank's tokens in one micro batch
    out = Estimate(c, microbatches=microbatches)
    worst = None
    for rank in range(c.pp):
        layers = rank_layers(cfg, c, rank)
        first, last = 0 in layers, cfg.n_layers - 1 in layers
        routed = sum(_routed(cfg, i) for i in layers) / c.ep
        blocks = sum(sum(_block_params(cfg, i)) - _routed(cfg, i) for i in layers) / c.tp
        # embedding and output projection split by vocabulary rows over tp, as kfm's plan splits them
        root = ((emb if first else 0) + ((0 if cfg.tie_embeddings else emb) if last else 0)) / c.tp + \
            (cfg.dim if last else 0)
        if last and cfg.mtp.depth:
            blocks += sum(sum(_block_params(cfg, i)) + 2 * cfg.dim * cfg.dim + 3 * cfg.dim - _routed(cfg, i)
                          for i in range(cfg.n_layers, cfg.n_layers + cfg.mtp.depth)) / c.tp
        states = 12 * ((blocks + root) / shard + routed / eshard)
        biggest = max((sum(_block_params(cfg, i)) - _routed(cfg, i)) / c.tp + _routed(cfg, i) / c.ep
                      for i in layers) if layers else 0
        gathered = (biggest + root) * param_bytes
        # accumulating over micro batches, FSDP2 keeps every unsharded gradient until the last one's reduce-scatter
        grads = (blocks + root + routed) * param_bytes if microbatches > 1 else 0.0
        per_block = [block_bytes_per_token(cfg, i, seq, dtype, c.tp, kernels) for i in layers]
        acts = _activations(cfg, c, per_block, tokens, dtype, kernels, ac_every, param_bytes)
        acts *= in_flight(c, rank, microbatches, schedule)
        loss = 0.0
        if last:
            chunk = LOGITS_PER_CHUNK if kernels == "torch" else LOGITS_PER_CHUNK_CUDA
            columns = cfg.vocab_size / c.tp  # a rank's share of the vocabulary
            loss = tokens * cfg.dim * param_bytes + columns * cfg.dim * 4 + min(chunk, tokens * columns) * 6
        memory = {"states": states, "gathered": gathered, "gradients": grads, "activations": acts, "loss": loss}
        if worst is None or sum(memory.values()) > sum(worst.values()):
            worst = memory
    out.memory = worst
    out.comm = _communication(cfg, c, microbatches, tokens, param_bytes)
    out.step_s = _step_time(cfg, c, hw, seq, seqs, out.comm, efficiency, microbatches, ac_every)
    out.tokens_per_s_per_gpu = seqs * seq / out.step_s / c.world
    return out


def kv_width(cfg: ModelConfig) -> int:
    """Key and value values per token that context parallelism gathers (latent attention: per head)."""
    if cfg.mla.enabled:
        return cfg.n_heads * (cfg.head_size + cfg.mla.v_head_dim)
    return 2 * cfg.n_kv_heads * cfg.head_size


def _activations(cfg, c: Candidate, per_block: list[float], tokens: int, dtype, kernels: str, ac_every: int,
                 param_bytes: int) -> float:
    """Bytes one micro batch leaves on a rank between its forward and its backward."""
    norms = 2 * norm_bytes_per_token(cfg.dim, dtype, kernels)  # the block's two norms, what SP shards
    kept = []
    for i, full in enumerate(per_block):
        if c.cp > 1:  # the gathered keys and values of the whole sequence
            full += (c.cp - 1) * kv_width(cfg) / c.tp * param_bytes
        if c.ac == "full" or (c.ac == "selective" and i % ac_every == 0):
            kept.append((cfg.dim * param_bytes / (c.tp if c.sp else 1), full))  # its input; all while recomputed
        else:
            kept.append((full - (norms * (1 - 1 / c.tp) if c.sp else 0.0), 0.0))
    held = sum(k for k, _ in kept) * tokens
    recompute = max((r for _, r in kept), default=0.0) * tokens
    return held + recompute + tokens * cfg.dim * param_bytes  # + the embedding's output


def _communication(cfg, c: Candidate, microbatches: int, tokens: int, param_bytes: int) -> dict:
    layers = max(len(rank_layers(cfg, c, r)) for r in range(c.pp))
    moe_layers = max(sum(cfg.is_moe(i) for i in rank_layers(cfg, c, r)) for r in range(c.pp))
    act = tokens * cfg.dim * param_bytes
    comm: dict[str, float] = {}
    params = sum(sum(_block_params(cfg, i)) - _routed(cfg, i) for i in range(cfg.n_layers)) / (c.tp * c.pp)
    routed = sum(_routed(cfg, i) for i in range(cfg.n_layers)) / (c.ep * c.pp)
    params += cfg.vocab_size * cfg.dim * (1 if cfg.tie_embeddings else 2) / (c.pp * c.tp)
    shard, eshard = c.dp * c.cp, max(c.dp * c.cp // c.ep, 1)
    fsdp = 0.0
    for size, n in ((params, shard), (routed, eshard)):
        if n > 1:
            fsdp += size * (n - 1) / n * (2 * microbatches * param_bytes + 4)
    comm["fsdp"] = fsdp
    if c.tp > 1:
        comm["tp"] = layers * microbatches * 4 * 2 * act * (c.tp - 1) / c.tp
    if c.ep > 1:
        comm["ep"] = moe_layers * microbatches * 4 * act * cfg.moe.top_k * (c.ep - 1) / c.ep
    if c.cp > 1:
        comm["cp"] = layers * microbatches * 2 * tokens * kv_width(cfg) / c.tp * param_bytes * (c.cp - 1)
    if c.pp > 1:
        comm["pp"] = microbatches * c.v * 2 * act
    return comm


def _spans_nodes(c: Candidate, dim: str, gpus_per_node: int) -> bool:
    """Whether the groups of mesh dimension ``dim`` reach over nodes (ranks: pp, dp, cp, tp, innermost last)."""
    inner = {"tp": c.tp, "cp": c.cp * c.tp, "ep": c.ep * c.cp * c.tp, "fsdp": c.dp * c.cp * c.tp,
             "pp": c.world}[dim]
    return inner > gpus_per_node


def _step_time(cfg, c: Candidate, hw: Hardware, seq: int, seqs: int, comm: dict, efficiency: float,
               microbatches: int, ac_every: int) -> float:
    recompute = {"none": 0.0, "full": 1.0, "selective": 1.0 / ac_every}[c.ac]
    flops = (3 + recompute) * flops_per_token(cfg, seq, causal=True, mtp=True) * seqs * seq / c.world
    compute = flops / (hw.bf16_tflops * 1e12 * efficiency)
    link = 0.7  # of the datasheet bandwidth, for collectives

    def seconds(dim: str) -> float:
        bw = hw.network_gb_s if _spans_nodes(c, dim, hw.gpus_per_node) else hw.nvlink_gb_s
        return comm.get(dim, 0.0) / (bw * 1e9 * link)

    exposed = seconds("tp") + seconds("ep") + seconds("cp") + seconds("pp")
    bubble = (c.pp - 1) / (microbatches * c.v) * compute if c.pp > 1 else 0.0
    return compute + exposed + max(0.0, seconds("fsdp") - compute) + bubble


def fits(e: Estimate, hw: Hardware, headroom: float = 0.9) -> bool:
    return e.memory_bytes <= headroom * hw.memory_gb * 1e9


def tokens_per_day(e: Estimate) -> float:
    return e.tokens_per_s_per_gpu * e.candidate.world * 86400


