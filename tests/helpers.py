"""Test helpers shared by the test modules (no test module imports another): a tiny real-text corpus and its
shards, jobs and tiny models, random Hugging Face models, reference attention, strings for round trips, and
running a function in N processes."""

from __future__ import annotations

import io
import json
import os
import random
import sysconfig
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp

from kfm.data_pipeline.build import build_shards
from kfm.data_pipeline.config import CleanConfig, DataConfig, DataSource, LoaderConfig
from kfm.model import ModelConfig, Transformer
from kfm.model.config import RopeConfig
from kfm.tokenizer.hf import SPACE
from kfm.train.checkpoint.layout import STATE_FILE
from kfm.train.config import (
    CheckpointConfig,
    MetricsConfig,
    OptimConfig,
    ParallelismConfig,
    PretrainJob,
    ProfilerConfig,
    StabilityConfig,
    TrainerConfig,
    ValidationConfig,
)
from kfm.train.parallel.distributed import free_port

KERNEL_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
"""Where the Triton kernel tests put their tensors: compiled on a GPU, under the interpreter on CPU (conftest)."""

KO_SENTENCES = [
    "대한민국은 민주공화국이다.",
    "대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다.",
    "모든 국민은 인간으로서의 존엄과 가치를 가지며, 행복을 추구할 권리를 가진다.",
    "모든 국민은 법 앞에 평등하다.",
    "누구든지 성별·종교 또는 사회적 신분에 의하여 차별을 받지 아니한다.",
    "셀 범위를 선택한 다음 서식 메뉴에서 셀 서식을 고릅니다.",
    "이 대화 상자에서 문서의 글꼴과 문단 간격을 지정할 수 있습니다.",
    "김치찌개는 돼지고기와 두부를 넣어 끓인 한국의 대표적인 음식이다.",
    "서울특별시는 한강을 끼고 있으며 인구가 약 천만 명이다.",
    "오늘 날씨가 맑아서 공원에 산책을 나갔습니다.",
    "한글은 세종대왕이 1443년에 창제한 문자로, 자음과 모음을 모아 음절을 만든다.",
    "학생들은 도서관에서 시험 공부를 하고 있었다.",
]
EN_SENTENCES = [
    "Select the cell range, then choose Format - Cells.",
    "The quick brown fox jumps over the lazy dog.",
    "This dialog lets you set the font and the paragraph spacing of the document.",
    "Returns the number of the next record to be read.",
]


def write_tiny_corpus(root: Path, n_docs: int = 300, seed: int = 0) -> dict[str, Path]:
    """ko/en jsonl documents shuffled from real sentences, and code from the stdlib; returns lang → path."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for lang, pool in (("ko", KO_SENTENCES), ("en", EN_SENTENCES)):
        paths[lang] = root / f"{lang}.jsonl"
        with paths[lang].open("w", encoding="utf-8") as f:
            for i in range(n_docs):
                text = "\n".join(rng.choice(pool) for _ in range(rng.randint(2, 6)))
                f.write(json.dumps({"text": f"{i}번 문서. {text}" if lang == "ko" else text}, ensure_ascii=False) + "\n")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    paths["code"] = root / "code.jsonl"
    with paths["code"].open("w", encoding="utf-8") as f:
        for name in ("textwrap.py", "colorsys.py", "bisect.py", "heapq.py"):
            f.write(json.dumps({"text": (stdlib / name).read_text(encoding="utf-8")}) + "\n")
    return paths


def _worker(rank: int, world: int, port: int, backend: str, fn, args, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    import torch
    import torch.distributed as dist

    try:
        dist.init_process_group(backend, rank=rank, world_size=world)
        # Send bytes, not tensors: shared-memory handles die with this process.
        buf = io.BytesIO()
        torch.save(fn(*args), buf)
        queue.put((rank, buf.getvalue(), None))
    except BaseException:  # noqa: BLE001 - report any failure to the parent
        queue.put((rank, None, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_distributed(fn, world: int, *args, timeout: float = 600, backend: str = "gloo") -> list:
    """Run ``fn(*args)`` in ``world`` spawned processes joined in a ``backend`` group (gloo on CPU; nccl needs a
    GPU each); returns each rank's result, raises on failure."""
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, backend, fn, args, queue)) for r in range(world)]
    for p in procs:
        p.start()
    results, errors = [None] * world, []
    for _ in range(world):
        rank, value, err = queue.get()
        results[rank] = torch.load(io.BytesIO(value), weights_only=False) if value is not None else None
        if err:
            errors.append(f"rank {rank}:\n{err}")
    for p in procs:
        p.join(timeout)
    if errors:
        raise RuntimeError("\n".join(errors))
    return results


SUB_CONFIGS = {"parallelism": ParallelismConfig, "checkpoint": CheckpointConfig, "stability": StabilityConfig,
               "validation": ValidationConfig, "metrics": MetricsConfig, "profiler": ProfilerConfig}
JOB_DEFAULTS = {"metrics": {"log_every": 2, "wandb_mode": "disabled"}, "validation": {"every": 4, "batches": 2},
                "checkpoint": {"every": 4, "keep": 5}}
"""What the tiny test jobs change from the trainer's defaults, per sub-config."""


def make_job(run_dir: Path, steps=8, tie=False, **trainer_kw) -> PretrainJob:
    """A tiny job on ``run_dir``'s shards. ``trainer_kw``: ``TrainerConfig`` fields, a sub-config as a dict of the
    fields to change (``parallelism={"backend": "ddp"}``), merged into ``JOB_DEFAULTS``."""
    sub = {name: {**JOB_DEFAULTS.get(name, {}), **trainer_kw.pop(name, {})} for name in SUB_CONFIGS}
    trainer = TrainerConfig(steps=steps, local_batch_size=4, **trainer_kw,
                            **{name: SUB_CONFIGS[name](**fields) for name, fields in sub.items()})
    return PretrainJob(
        run_dir=str(run_dir),
        model=ModelConfig(vocab_size=768, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden_dim=96,
                          max_seq_len=64, tie_embeddings=tie),
        loader=LoaderConfig(seq_len=32),
        optim=OptimConfig(lr=1e-2, warmup_steps=2),
        trainer=trainer,
    )


def train_and_report(job: PretrainJob):
    from kfm.train.loop.trainer import Trainer
    from kfm.train.parallel.distributed import init_distributed

    trainer = Trainer(job, init_distributed())
    last = trainer.fit()
    return last, trainer.engine.full_state_dict()


def write_split_corpus(root: Path, files: dict[str, int], docs: int = 120, seed: int = 0) -> dict[str, Path]:
    """Sources as folders of ``files[source]`` jsonl files of distinct documents (``ko``: words of common Hangul
    syllables, ``en``: words of letters, ``code``: stdlib modules), dealt in turn, each with a ``url``. Planted
    across files of ``ko``: document 1 again exactly, and documents 3 and 5 slightly changed (Jaccard of their
    5-character shingles ~0.8), in the last file. Returns source -> folder."""
    rng = random.Random(seed)
    syllables = "가나다라마바사아자차카타파하고노도로모보소오조초코토포호구누두루무부수우주추한국어문서입니"
    letters = "etaoinshrdlucmfwypvbgk"

    def text(alphabet: str, lo: int, hi: int) -> str:
        return " ".join("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4)))
                        for _ in range(rng.randint(lo, hi))) + "."

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    sources = {
        "ko": [text(syllables, 40, 120) for _ in range(docs)],
        "en": [text(letters, 40, 120) for _ in range(docs)],
        "code": [(stdlib / m).read_text(encoding="utf-8") for m in ("textwrap.py", "colorsys.py", "bisect.py")],
    }
    out = {}
    for name, texts in sources.items():
        n = files[name]
        parts = [texts[f::n] for f in range(n)]
        if name == "ko":
            near = texts[3].split(" ")
            near[5:8] = ["바뀐", "단어"]
            parts[-1] += [texts[1], " ".join(near), texts[5][: int(len(texts[5]) * 0.9)]]
        out[name] = root / name
        out[name].mkdir(parents=True)
        for f, part in enumerate(parts):
            with (out[name] / f"part-{f:03d}.jsonl").open("w", encoding="utf-8") as fh:
                for t in part:
                    fh.write(json.dumps({"text": t, "url": f"https://{name}{f}.example.kr/{len(t)}"},
                                        ensure_ascii=False) + "\n")
    return out


def warc_record(kind: str, url: str, body: bytes, content_type: str = "text/plain",
                length: int | None = None) -> bytes:
    """One WARC/1.0 record (``length`` overrides Content-Length, to write a damaged one)."""
    head = (f"WARC/1.0\r\nWARC-Type: {kind}\r\nWARC-Target-URI: {url}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n\r\n")
    return head.encode() + body + b"\r\n\r\n"


def write_warc(path: Path, records: list[bytes]) -> Path:
    """Records into a ``.warc``/``.wet`` file, or one gzip member per record for ``.gz`` (as Common Crawl's)."""
    import gzip

    path.write_bytes(b"".join(gzip.compress(r) for r in records) if path.suffix == ".gz" else b"".join(records))
    return path


def split_corpus_config(corpus: dict[str, Path], **clean) -> DataConfig:
    """The data config of ``write_split_corpus``'s folders (small shards: several per file)."""
    return DataConfig(sources=[DataSource(name=k, path=str(v), lang=k) for k, v in corpus.items()],
                      val_fraction=0.1, shard_tokens=4000, clean=CleanConfig(**clean))


def shard_bytes(data_dir: Path) -> dict[str, bytes]:
    """Every shard and offsets file under ``data_dir``: relative path -> bytes."""
    return {str(p.relative_to(data_dir)): p.read_bytes() for p in sorted(data_dir.rglob("*"))
            if p.suffix in (".bin", ".idx")}


def build_tiny_shards(corpus: dict, tokenizer: Path, out: Path) -> None:
    # The tiny corpus recombines a few sentences: near-dedup would leave too little of it (tested elsewhere).
    cfg = DataConfig(sources=[DataSource(name=k, path=str(v)) for k, v in corpus.items()],
                     val_fraction=0.1, num_workers=1, clean=CleanConfig(dedup_near=False))
    build_shards(cfg, tokenizer / "tokenizer.model", out)


def read_metrics(run_dir: Path, key: str) -> list[float]:
    import json

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if key in r]


SMALL = dict(vocab_size=768, hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=64, rms_norm_eps=1e-6)


LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}


def hf_config(name: str):
    """Tiny configs written the way `transformers` users write them (not derived from kfm's)."""
    import transformers

    if name == "llama":
        return transformers.LlamaConfig(**SMALL, num_hidden_layers=2, rope_parameters=LLAMA3_ROPE,
                                        architectures=["LlamaForCausalLM"])
    if name == "qwen2":
        return transformers.Qwen2Config(**SMALL, num_hidden_layers=2, tie_word_embeddings=True,
                                        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                                        architectures=["Qwen2ForCausalLM"])
    if name == "qwen3":
        return transformers.Qwen3Config(**SMALL, num_hidden_layers=2, head_dim=32, tie_word_embeddings=True,
                                        architectures=["Qwen3ForCausalLM"])
    return transformers.Exaone4Config(**SMALL, num_hidden_layers=4, sliding_window=6,
                                      layer_types=["sliding_attention"] * 3 + ["full_attention"],
                                      architectures=["Exaone4ForCausalLM"])


def random_hf_model(name: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(name)).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname or "bias" in pname:  # off their 1.0 / 0.0 init, so a mix-up shows
                p.uniform_(0.5, 1.5)
    return model


def tiny_cfg(**kw):
    base = dict(vocab_size=768, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden_dim=96, max_seq_len=64,
                rope=RopeConfig(theta=500000.0), norm_eps=1e-6)
    return ModelConfig(**{**base, **kw})


def random_model(cfg, seed=0):
    torch.manual_seed(seed)
    m = Transformer(cfg)
    m.init_weights(seed=seed)
    with torch.no_grad():  # move norms off 1.0 so the test sees them
        for name, p in m.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return m.eval()


def save_checkpoint(m, cfg, ckpt, step: int):
    """``m`` as a weights-only kfm checkpoint at ``ckpt`` (DCP + trainer state)."""
    dcp.save({"model": m.state_dict()}, checkpoint_id=str(ckpt))
    (ckpt / STATE_FILE).write_text(json.dumps({"step": step, "config": {"model": asdict(cfg)}}))
    return ckpt


def reference_attention(q, k, v, allowed):
    """Plain softmax attention with the key/value heads repeated, in fp32."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1).float(), v.repeat_interleave(rep, 1).float()
    scores = q.float() @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    return (scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v).to(q.dtype)


FIXED_CASES = [
    "",
    "안녕하세요, 세계!",
    "ㄱㄴㄷ ㅏㅑㅓ 각",  # compatibility jamo and conjoining jamo
    "뷁뙇쌰똠 햏",  # syllables outside KS X 1001
    "😀 👩‍👩‍👧 🇰🇷",
    "Mixed 한국어 text with 日本語, 中文, Ελληνικά and עברית.",
    "a  b   c    d",
    "  leading and trailing  ",
    "\ttabs\t\tand\nnew\n\nlines\r\n",
    "def f(x):\n    return x  # indentation\n",
    "\x00\x01\x7f\ufffd\ufeff\u200b",  # control, replacement, BOM, zero-width space
    "e\u0301 vs é",  # decomposed and composed
    "<s></s><unk><pad> <0x41>",  # special-token look-alikes are plain text
    "1234567890 3.14159 010-1234-5678",
    "\U0010ffff\U0001f600",
    "\u2581 is not a space, ▁▁ neither",
]


def random_strings(n: int, seed: int = 0) -> list[str]:
    """Strings drawn from many scripts, whitespace, U+2581 and control characters."""
    rng = random.Random(seed)
    ranges = [(0x20, 0x7E), (0xAC00, 0xD7A3), (0x1100, 0x11FF), (0x3130, 0x318F), (0x4E00, 0x9FFF),
              (0x0400, 0x04FF), (0x1F300, 0x1F6FF), (0x0, 0x1F), (0xE000, 0xF8FF), (0x10000, 0x10FFFF)]
    out = []
    for _ in range(n):
        chars = []
        for _ in range(rng.randint(1, 40)):
            if rng.random() < 0.2:
                chars.append(rng.choice(" \t\n  "))
                continue
            lo, hi = rng.choice(ranges)
            c = chr(rng.randint(lo, hi))
            if not 0xD800 <= ord(c) <= 0xDFFF:
                chars.append(c)
            if rng.random() < 0.05:
                chars.append(SPACE)
        out.append("".join(chars))
    return out


BASE = dict(vocab_size=211, dim=64, n_layers=4, n_heads=4, n_kv_heads=2, ffn_hidden_dim=96, max_seq_len=64,
            norm_eps=1e-6)

VARIANTS = {
    "llama": dict(),
    "llama_untied_gqa8": dict(n_heads=8, n_kv_heads=1, tie_embeddings=True),
    "llama_rope_linear": dict(rope=RopeConfig(theta=50000.0, scaling="linear", factor=4.0)),
    "llama_rope_llama3": dict(rope=RopeConfig(theta=500000.0, scaling="llama3", factor=8.0, original_max_seq_len=16)),
    "llama_rope_yarn": dict(rope=RopeConfig(theta=1e6, scaling="yarn", factor=4.0, original_max_seq_len=16)),
    "qwen2_bias": dict(qkv_bias=True, rope=RopeConfig(theta=1e6)),
    "qwen3_qknorm_headdim": dict(qk_norm=True, head_dim=32, tie_embeddings=True),
    "exaone4_hybrid": dict(qk_norm=True, norm_placement="post", sliding_window=6, layer_pattern="LLLG",
                           rope_on_global_layers=False),
}


def moe_model_cfg(**moe) -> ModelConfig:
    """A tiny MoE model: a dense first layer, then 8 experts (top-2, sigmoid, 2 groups, a shared expert, the bias)."""
    from kfm.model.config import MoEConfig

    base = dict(n_experts=8, top_k=2, expert_hidden_dim=24, n_shared_experts=1, first_k_dense=1,
                score_func="sigmoid", norm_topk_prob=True, routed_scaling_factor=2.5, n_group=2, topk_group=1,
                expert_bias=True)
    return ModelConfig(vocab_size=256, dim=32, n_layers=3, n_heads=4, n_kv_heads=2, ffn_hidden_dim=48,
                       max_seq_len=64, moe=MoEConfig(**{**base, **moe}))


def random_hf_moe(kind: str):
    """A tiny Qwen3-MoE or EXAONE-MoE model written as `transformers` users write one (not derived from kfm's config):
    dense first layer, 8 experts, (EXAONE) a shared expert, groups, the sliding-window pattern and a random bias; its
    routers scaled up so that no choice is a near-tie."""
    import transformers
    from transformers import AutoModelForCausalLM

    small = dict(vocab_size=768, hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=32, max_position_embeddings=64, rms_norm_eps=1e-6, moe_intermediate_size=32,
                 num_experts=8, norm_topk_prob=True)
    if kind == "qwen3_moe":
        c = transformers.Qwen3MoeConfig(**small, num_hidden_layers=3, num_experts_per_tok=3, mlp_only_layers=[0],
                                        architectures=["Qwen3MoeForCausalLM"])
    else:
        c = transformers.ExaoneMoeConfig(**small, num_hidden_layers=4, num_experts_per_tok=2, num_shared_experts=1,
                                         first_k_dense_replace=1, n_group=2, topk_group=1,
                                         routed_scaling_factor=2.5, sliding_window=6, sliding_window_pattern=4,
                                         architectures=["ExaoneMoeForCausalLM"])
    torch.manual_seed(0)
    return spread_routers(AutoModelForCausalLM.from_config(c).eval())


@torch.no_grad()
def spread_routers(model):
    """A `transformers` MoE model with a random expert bias that changes the choice and its routers scaled up so
    that no choice is a near-tie (a tie would let rounding pick another expert in each implementation)."""
    for name, b in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            b.copy_(torch.randn_like(b) * 0.05)
    for name, p in model.named_parameters():
        if name.endswith("mlp.gate.weight"):
            p.mul_(20)
    return model


HOST_SIDE = ("_check_flat",)
"""kfm functions that read tensors which are on the CPU whatever the device (the loader's ``cu_seqlens``, checked
before they move): not device synchronisations, though a CPU-only test cannot tell them apart."""


def count_step_syncs(job) -> int:
    """In a 1-process group: kfm's own reads of a tensor's value on the host (``item``, ``tolist``, ``int()``,
    ``float()``, ``bool()``) during one training step (after one to warm up), which is where a step waits for the
    device. (PyTorch's CPU AdamW reads its CPU step counters with ``item``; those are not kfm's, and not device
    synchronisations.)"""
    import sys
    from pathlib import Path

    from kfm.train.loop.trainer import Trainer
    from kfm.train.parallel.distributed import init_distributed

    root = Path(__file__).resolve().parents[1]
    ours = tuple(str(root / d) for d in ("model", "train", "data_pipeline"))
    trainer = Trainer(job, init_distributed(), hooks=[])
    trainer.train_step()
    calls, real = [], {m: getattr(torch.Tensor, m) for m in ("item", "tolist", "__int__", "__float__", "__bool__")}

    def counted(fn):
        def call(self, *a, **k):
            code = sys._getframe(1).f_code
            if code.co_filename.startswith(ours) and code.co_name not in HOST_SIDE:
                calls.append(code.co_name)
            return fn(self, *a, **k)
        return call

    try:
        for m, fn in real.items():
            setattr(torch.Tensor, m, counted(fn))
        trainer.train_step()
    finally:
        for m, fn in real.items():
            setattr(torch.Tensor, m, fn)
    return trainer.accum, len(calls)


def mla_model_cfg(mla: dict | None = None, moe: dict | None = None, **kw) -> ModelConfig:
    """A tiny latent-attention model (DeepSeek-V3's shape in miniature, with awkward widths): 4 heads of q/k 14
    (6 rotated) and v 10, a query latent of 20 and a key/value latent of 18; ``moe``: a dense first layer, then 8
    sigmoid experts in 4 groups (2 kept), a shared expert, the bias."""
    from kfm.model.config import LatentAttentionConfig, MoEConfig

    latent = dict(kv_lora_rank=18, q_lora_rank=20, qk_rope_head_dim=6, v_head_dim=10)
    base = dict(vocab_size=256, dim=48, n_layers=3, n_heads=4, n_kv_heads=4, head_dim=14, ffn_hidden_dim=64,
                max_seq_len=64, norm_eps=1e-6, mla=LatentAttentionConfig(**{**latent, **(mla or {})}))
    if moe is not None:
        experts = dict(n_experts=8, top_k=2, expert_hidden_dim=24, n_shared_experts=1, first_k_dense=1,
                       score_func="sigmoid", norm_topk_prob=True, routed_scaling_factor=2.5, n_group=4, topk_group=2,
                       expert_bias=True)
        base["moe"] = MoEConfig(**{**experts, **moe})
    return ModelConfig(**{**base, **kw})


class LayoutRun(NamedTuple):
    """What a training run under one parallel layout leaves: every step's training loss, every validation loss,
    and the final weights gathered from the layout."""

    losses: list[float]
    val_losses: list[float]
    weights: dict[str, torch.Tensor]


def layout_run(run_dir: Path, data: Path, model, world: int, steps: int = 6, global_batch: int = 8,
               local_batch: int = 4, document_masking: bool = True, **parallelism) -> LayoutRun:
    """``steps`` fp32 steps of ``model`` on ``world`` gloo processes under ``trainer.parallelism`` = ``parallelism``,
    a checkpoint every 3 steps, a validation every 3. AdamW turns a near-zero gradient into a whole step of its sign,
    so rounding noise (~1e-10 where a gradient's parts cancel) would move such elements by +-lr in one layout and
    not the other: eps 1e-6 lets them rest."""
    job = make_job(run_dir, steps=steps, global_batch_size=global_batch, metrics={"log_every": 1},
                   checkpoint={"every": 3}, validation={"every": 3, "batches": 1}, parallelism=parallelism)
    job.model, job.data_dir = model, str(data)
    job.trainer.local_batch_size, job.trainer.document_masking = local_batch, document_masking
    job.optim.lr, job.optim.eps = 2e-3, 1e-6
    weights = run_distributed(train_and_report, world, job)[0][1]
    return LayoutRun(read_metrics(run_dir, "train_loss"), read_metrics(run_dir, "val_loss"), weights)


def assert_values_equal(values: list[float], reference: list[float], rel: float = 1e-5) -> None:
    """The same number of values (at least 2), each within ``rel`` of the reference's."""
    assert len(values) == len(reference) >= 2, (values, reference)
    for step, (a, b) in enumerate(zip(values, reference)):
        assert abs(a - b) <= rel * abs(b), (step, a, b)


def assert_weights_close(weights: dict, reference: dict, rel: float = 1e-5) -> None:
    """The same tensors, each within ``rel`` of the reference's in relative L2 norm."""
    assert weights.keys() == reference.keys()
    for key, value in reference.items():
        diff = ((weights[key] - value).norm() / value.norm().clamp(min=1e-12)).item()
        assert diff < rel, (key, diff)


def assert_same_run(ours: LayoutRun, reference: LayoutRun, validation: bool = True) -> None:
    """Every training loss and the final weights as the reference run's; ``validation``: the validation losses too
    (a global validation batch is the local batch x data-parallel ranks: comparable at equal data parallelism)."""
    assert len(ours.losses) >= 5, ours.losses
    assert_values_equal(ours.losses, reference.losses)
    if validation:
        assert_values_equal(ours.val_losses, reference.val_losses)
    assert_weights_close(ours.weights, reference.weights)
