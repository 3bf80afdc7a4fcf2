"""The layout planner: per-GPU memory, communication and estimated throughput of candidate layouts, and the one
it recommends.

    python -m kfm.train.plan model=k_exaone_236b_like cluster=h100_node gpus=256 seq_len=8192 \\
        global_batch_tokens=16777216 [top=10] [efficiency=0.4] [layout=tp=4,pp=16,ep=32,ac=full]

Candidates: tensor parallelism within a node (1-8), pipeline stages, context parallelism (1-8), expert
parallelism over the data-parallel ranks (MoE), micro batches of 1, 2 or 4 sequences, activation checkpointing
none / selective / full, sequence parallelism with tp. Each is checked against what kfm can run today
(``kfm.train.parallel.layout``); the recommendation is the fastest runnable layout whose memory fits in 90% of
the GPU's, and the fastest layout overall is shown next to it when kfm cannot run that one yet. The model of
memory and time is ``kfm.train.plan.estimate``; hardware comes from the cluster profile (``configs/cluster/``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import hydra
from omegaconf import OmegaConf

from kfm.model import ModelConfig
from kfm.schemas import register_schemas
from kfm.train.cli import CONFIG_DIR
from kfm.train.config import ClusterConfig, ParallelismConfig
from kfm.train.parallel.layout import check_layout, check_microbatches
from kfm.train.plan.estimate import GiB, Candidate, Estimate, Hardware, estimate, fits, tokens_per_day

log = logging.getLogger(__name__)
MEMORY = ("states", "gathered", "gradients", "activations", "loss")


@dataclass
class PlanJob:
    """``python -m kfm.train.plan``: the model, the cluster profile and the run's shape."""

    model: ModelConfig = field(default_factory=ModelConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    gpus: int = 8
    seq_len: int = 8192
    global_batch_tokens: int = 4 * 2**20
    param_dtype: str = "bf16"
    """Compute dtype of the gathered parameters and the activations (``bf16`` or ``fp32``)."""
    efficiency: float = 0.4
    """Fraction of the dense bf16 peak the model FLOPs reach (torchtitan and Megatron-LM report 35-50% MFU on
    H100s for dense models in bf16; MoE runs lower)."""
    top: int = 10
    """Rows of the table (fastest first)."""
    layout: str = ""
    """One layout to evaluate instead of searching, e.g. ``tp=4,pp=16,ep=32,ac=full,micro=1``."""

    def __post_init__(self) -> None:
        if self.gpus < 1 or self.seq_len < 1 or self.global_batch_tokens < self.seq_len:
            raise ValueError(f"gpus, seq_len must be positive and global_batch_tokens >= seq_len, got gpus={self.gpus}, "
                             f"seq_len={self.seq_len}, global_batch_tokens={self.global_batch_tokens}")
        if self.param_dtype not in ("bf16", "fp32"):
            raise ValueError(f"param_dtype must be bf16 or fp32, got {self.param_dtype!r}")
        if not 0 < self.efficiency <= 1:
            raise ValueError(f"efficiency must be in (0, 1], got {self.efficiency}")


def hardware(cluster: ClusterConfig) -> Hardware:
    if not cluster.gpu_memory_gb:
        raise ValueError(f"cluster={cluster.name} has no GPU figures (gpu_memory_gb, bf16_tflops, nvlink_gb_s, "
                         "network_gb_s): plan with a GPU profile such as cluster=h100_node")
    return Hardware(cluster.gpu_memory_gb, cluster.bf16_tflops, cluster.nvlink_gb_s, cluster.network_gb_s,
                    cluster.gpus_per_node)


def runnable(c: Candidate, cfg: ModelConfig, gpus: int, seq: int, microbatches: int) -> str:
    """``""`` if kfm runs ``c`` today, else why not (the refusal ``check_layout`` gives)."""
    try:
        pc = ParallelismConfig(tp=c.tp, pp=c.pp, ep=c.ep, cp=c.cp, sequence_parallel=c.sp,
                               pp_stages_per_rank=c.v, pp_schedule="interleaved_1f1b" if c.v > 1 else "1f1b",
                               activation_checkpointing=c.ac)
        check_layout(pc, cfg, gpus, seq)
        check_microbatches(pc, microbatches)
    except ValueError as err:
        return str(err).removeprefix("trainer.parallelism.")
    return ""


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidates(cfg: ModelConfig, gpus: int, per_node: int, seq: int, global_tokens: int) -> list[Candidate]:
    seqs = global_tokens // seq
    out = []
    for tp in (t for t in (1, 2, 4, 8) if t <= max(per_node, 1) and gpus % t == 0):
        for pp in (p for p in _divisors(gpus // tp) if p <= 32 and p <= cfg.n_layers):
            for cp in (c for c in (1, 2, 4, 8) if (gpus // (tp * pp)) % c == 0 and seq % (2 * c) == 0):
                dp = gpus // (tp * pp * cp)
                experts = cfg.moe.n_experts
                eps = [e for e in _divisors(dp) if experts % e == 0 and e <= experts] if experts else [1]
                for ep in eps:
                    for micro in (m for m in (1, 2, 4) if seqs % (dp * m) == 0):
                        for ac in ("none", "selective", "full"):
                            for v in ((1, 2) if pp > 1 else (1,)):
                                for sp in ((False, True) if tp > 1 else (False,)):
                                    out.append(Candidate(dp, tp, pp, ep, cp, v, micro, ac, sp))
    return out


def parse_layout(text: str, gpus: int) -> Candidate:
    """``tp=4,pp=16,ep=32,cp=1,v=1,micro=1,ac=full,sp=true`` → a Candidate (dp: what is left of ``gpus``)."""
    values: dict = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        if key not in ("tp", "pp", "ep", "cp", "v", "micro", "ac", "sp"):
            raise ValueError(f"layout: unknown key {key!r} in {text!r}; keys: tp, pp, ep, cp, v, micro, ac, sp")
        values[key] = value if key == "ac" else (value.lower() == "true" if key == "sp" else int(value))
    size = values.get("tp", 1) * values.get("pp", 1) * values.get("cp", 1)
    if gpus % size:
        raise ValueError(f"layout {text!r}: tp x pp x cp = {size} does not divide gpus={gpus}")
    return Candidate(dp=gpus // size, **values)


def plan(job: PlanJob) -> tuple[list[tuple[Estimate, str]], Estimate | None, Estimate | None]:
    """(rows fastest first: (estimate, why kfm cannot run it or ""), the recommendation, the fastest overall)."""
    hw = hardware(job.cluster)
    pbytes = 2 if job.param_dtype == "bf16" else 4
    pool = ([parse_layout(job.layout, job.gpus)] if job.layout else
            candidates(job.model, job.gpus, job.cluster.gpus_per_node, job.seq_len, job.global_batch_tokens))
    rows = []
    for c in pool:
        e = estimate(job.model, c, hw, job.seq_len, job.global_batch_tokens, pbytes, "fused", job.efficiency,
                     "interleaved_1f1b" if c.v > 1 else "1f1b")
        rows.append((e, runnable(c, job.model, job.gpus, job.seq_len, e.microbatches)))
    rows.sort(key=lambda r: (not fits(r[0], hw), -r[0].tokens_per_s_per_gpu))
    fitting = [r for r in rows if fits(r[0], hw)]
    best = next((e for e, why in fitting if not why), None)
    fastest = fitting[0][0] if fitting else None
    return rows, best, fastest


def _short(why: str) -> str:
    """The refusal's reason without the setting it starts with and the advice after it."""
    text = re.sub(r"^\w+=\d+: ", "", why)
    return re.split(r": |; | \(", text)[0][:70]


def table(rows: list[tuple[Estimate, str]], hw: Hardware, top: int) -> str:
    lines = ["| layout | kfm runs it | GiB/GPU (states + gathered + gradients + activations + loss) | fits | comm GB/step "
             "(fsdp, tp, ep, cp, pp) | step s | tokens/s/GPU | tokens/day |", "|" + "---|" * 8]
    for e, why in rows[:top]:
        m = e.memory
        mem = f"{e.memory_bytes / GiB:.1f} (" + " + ".join(f"{m[k] / GiB:.1f}" for k in MEMORY) + ")"
        comm = ", ".join(f"{e.comm.get(k, 0) / 1e9:.0f}" for k in ("fsdp", "tp", "ep", "cp", "pp"))
        lines.append(f"| {e.candidate.name()} | {'yes' if not why else 'no: ' + _short(why)} | {mem} | "
                     f"{'yes' if fits(e, hw) else 'no'} | {comm} | {e.step_s:.2f} | {e.tokens_per_s_per_gpu:,.0f} | "
                     f"{tokens_per_day(e) / 1e9:,.0f}B |")
    return "\n".join(lines)


def report(job: PlanJob) -> str:
    rows, best, fastest = plan(job)
    hw = hardware(job.cluster)
    text = [f"# {job.model.name} on {job.gpus} x {job.cluster.name}: seq {job.seq_len}, "
            f"{job.global_batch_tokens:,} tokens a step, {len(rows)} layouts", "", table(rows, hw, job.top), ""]
    if not rows:
        text.append(f"No candidate: the {job.global_batch_tokens // job.seq_len} sequences of a step must be a multiple "
                    "of the data-parallel ranks x the micro batch (1, 2 or 4); choose global_batch_tokens so")
    elif best is None:
        text.append("No layout kfm runs today fits in 90% of the GPU's memory.")
    else:
        text.append(f"Recommended: {best.candidate.name()}: {best.memory_bytes / GiB:.1f} GiB/GPU, "
                    f"{best.tokens_per_s_per_gpu:,.0f} tokens/s/GPU, {tokens_per_day(best) / 1e9:,.0f}B tokens/day")
    if fastest is not None and best is not None and fastest is not best:
        text.append(f"Fastest overall (kfm cannot run it yet): {fastest.candidate.name()}: "
                    f"{fastest.tokens_per_s_per_gpu:,.0f} tokens/s/GPU")
    return "\n".join(text)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="plan")
def main(cfg) -> None:
    job = OmegaConf.to_object(cfg)
    print(report(job))


register_schemas("plan_job_schema")
