"""The training step on one GPU, kfm against torchtitan: the same Llama-3-8B-shaped model, the same settings, the
same synthetic tokens, one implementation per process, the order alternated.

    python bench/gpu/step.py --out bench/results [--layers auto] [--seq 8192] [--cases one:none packed:tensorwise]
    python bench/gpu/step.py --smoke --out DIR      # CPU: tiny shapes, gloo, no compile, FP8 emulated

Per row: tokens/s (median over the measured steps), MFU against the GPU's dense bf16 peak (kfm's table,
``kfm.train.config.peaks``; the same FLOPs count, ``kfm.model.accounting.flops_per_token`` with causal attention,
for both, since the models are the same shape), peak memory, and the last loss. Settings for both: FSDP2 on a
one-GPU mesh with bf16 parameters and fp32 gradient reduction, every second block activation-checkpointed
(selective, by layer), ``torch.compile`` per block, AdamW, bf16 compute; ``--fp8``: torchao's float8 training of the
blocks' linear layers (the output head kept in bf16), with FP8 all-gather for ``tensorwise``.

- kfm: its trainer's own path (``kfm.train.parallel.parallelize`` with ``trainer.parallelism`` set as above,
  ``model_runtime`` auto: kfm's Triton kernels, its attention backend choice, the chunked linear + cross-entropy).
- torchtitan: its ``Llama3Model`` built from its own Llama 3 layer configs at the same shapes (fused QKV, its RoPE),
  wrapped with the same torch APIs its ``parallelize_llama`` applies (``fully_shard``, checkpoint wrappers,
  ``torch.compile``, torchao), its FlexAttention (the only attention its 0.3 language models take besides varlen:
  the causal block mask for one document a row, its packed-document mask for ``--packed``); full logits and a
  compiled fp32 cross-entropy. ``parallelize_llama`` and the ``ChunkedLossWrapper`` of its 8B config drive its own
  trainer config and backward, so the wrapping is repeated here and the loss is the unchunked one: torchtitan's
  peak memory here is higher than in its trainer by the logits (seq x vocab x 10 bytes).

Packed documents (``--packed``): every row cut into documents of random lengths (mean ``--doc-len``), the same
cuts for both; kfm masks by its ``cu_seqlens``, torchtitan by positions that restart at each document.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


SHAPES = {
    "llama3-8b": dict(vocab=128256, dim=4096, heads=32, kv_heads=8, ffn=14336),
    "tiny": dict(vocab=512, dim=64, heads=4, kv_heads=2, ffn=192),
}
PARAM_BYTES = 4 + 4 + 8 + 2  # fp32 shard, fp32 gradient, AdamW's two moments, the bf16 all-gathered copy


def auto_layers(shape: dict, gpu_bytes: float, seq: int) -> int:
    """As many layers as fit with AdamW states: parameters at ``PARAM_BYTES`` each, the embedding and the head at
    the same, ~1 GB of activations a layer at seq 8192 with every second block checkpointed, full logits for
    torchtitan's loss (bf16 + fp32 + gradient), 10% headroom."""
    d, f, v = shape["dim"], shape["ffn"], shape["vocab"]
    kv = d // shape["heads"] * shape["kv_heads"]
    layer = (2 * d * d + 2 * d * kv + 3 * d * f) * PARAM_BYTES + 1.0e9 * seq / 8192
    fixed = 2 * v * d * PARAM_BYTES + seq * v * (2 + 4 + 4)
    return max(1, int((0.9 * gpu_bytes - fixed) // layer))


def batches(shape: dict, batch: int, seq: int, packed: bool, doc_len: int, n: int):
    """``n`` batches of (inputs, targets, positions restarting per document, flat document boundaries)."""
    import torch

    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        tokens = torch.randint(0, shape["vocab"], (batch, seq + 1), generator=g)
        positions = torch.arange(seq).repeat(batch, 1)
        cuts = [0]
        for row in range(batch):
            starts = [0]
            if packed:
                lengths = torch.empty(seq // 8 + 2).exponential_(1.0 / doc_len, generator=g).long().clamp(min=16)
                starts = [0, *[int(s) for s in lengths.cumsum(0) if s < seq]]
            for a, b in zip(starts, [*starts[1:], seq]):
                positions[row, a:b] = torch.arange(b - a)
            cuts += [row * seq + s for s in starts[1:]] + [(row + 1) * seq]
        out.append((tokens[:, :-1], tokens[:, 1:], positions, torch.tensor(cuts, dtype=torch.int32)))
    return out


def build_kfm(shape: dict, layers: int, seq: int, args, info):
    import torch

    from kfm.model import Transformer
    from kfm.model.config import ModelConfig, RopeConfig
    from kfm.train.config import ParallelismConfig
    from kfm.train.parallel.parallelize import assign_local_shard, build_mesh, parallelize

    cfg = ModelConfig(name="llama3-8b-shaped", vocab_size=shape["vocab"], dim=shape["dim"], n_layers=layers,
                      n_heads=shape["heads"], n_kv_heads=shape["kv_heads"], ffn_hidden_dim=shape["ffn"],
                      max_seq_len=seq, rope=RopeConfig(theta=500000.0), tie_embeddings=False)
    pc = ParallelismConfig(backend="fsdp2", param_dtype="bf16", activation_checkpointing="selective", ac_every=2,
                           compile=args.compile, fp8=args.fp8, fp8_emulate=args.smoke and args.fp8 != "none")
    with torch.device("meta"):
        model = Transformer(cfg)
    model = parallelize(model, pc, info, build_mesh(pc, info))
    model.to_empty(device=info.device)
    model.init_weights(seed=0, assign=assign_local_shard)

    def loss(inputs, targets, positions, cuts):
        docs = (positions, cuts) if args.packed else (None, None)
        return model(inputs, *docs, targets=targets)

    return model, loss


def _dense_flex_on_cpu() -> None:
    """Smoke runs only: FlexAttention has no backward on CPU, so torchtitan's flex call is replaced by SDPA with the
    same mask made dense (``create_mask`` of the block mask's ``mask_mod``). GPU runs use torchtitan's own flex."""
    import torch.nn.functional as F
    from torch.nn.attention.flex_attention import create_mask
    from torchtitan.models.common.attention import FlexAttention

    def dense(q, k, v, *, score_mod, block_mask, scale, enable_gqa, return_aux, kernel_options):
        mask = create_mask(block_mask.mask_mod, q.shape[0], 1, q.shape[2], k.shape[2], device=q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=enable_gqa), None

    FlexAttention.compiled_flex_attn = staticmethod(dense)


def build_titan(shape: dict, layers: int, seq: int, args, info):
    import torch
    import torch.nn.functional as F
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from torchtitan.models.common import ComplexRoPE, Embedding, Linear, RMSNorm
    from torchtitan.models.llama3 import Llama3Model
    from torchtitan.models.llama3 import _build_llama3_layers as titan_layers

    from kfm.train.config import ParallelismConfig
    from kfm.train.parallel.fp8 import after_optimizer_step, convert_to_fp8

    d = shape["dim"]
    init = {"weight": torch.nn.init.ones_}
    config = Llama3Model.Config(
        dim=d, vocab_size=shape["vocab"],
        tok_embeddings=Embedding.Config(num_embeddings=shape["vocab"], embedding_dim=d,
                                        param_init={"weight": torch.nn.init.normal_}),
        norm=RMSNorm.Config(normalized_shape=d, param_init=init),
        lm_head=Linear.Config(in_features=d, out_features=shape["vocab"]),
        layers=titan_layers(fuse_qkv=True, n_layers=layers, dim=d, n_heads=shape["heads"],
                            n_kv_heads=shape["kv_heads"], hidden_dim=shape["ffn"],
                            rope=ComplexRoPE.Config(dim=d // shape["heads"], max_seq_len=seq, theta=500000),
                            attn_backend="flex"))
    if args.smoke:
        _dense_flex_on_cpu()
    with torch.device("meta"):
        model = config.build()
    fp8 = ParallelismConfig(fp8=args.fp8).fp8
    convert_to_fp8(model, fp8, fsdp_all_gather=True, emulate=args.smoke, skip=("lm_head",))
    for i, name in enumerate(list(model.layers.keys())):
        block = model.layers[name]
        if i % 2 == 0:
            block = checkpoint_wrapper(block, preserve_rng_state=False)
        if args.compile:
            block = torch.compile(block, fullgraph=False)
        model.layers[name] = block
    mesh = init_device_mesh(info.device.type, (1,))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in model.layers.values():
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    model.to_empty(device=info.device)
    with torch.no_grad():
        model.init_states(buffer_device=info.device)

    def ce(logits, targets):
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

    ce = torch.compile(ce) if args.compile else ce

    def loss(inputs, targets, positions, cuts):
        # torchtitan masks by positions always (its language models dropped SDPA): one document a row is positions
        # 0..seq-1, i.e. the causal mask.
        masks = model.get_attention_masks(positions if args.packed else torch.arange(seq, device=inputs.device)
                                          .expand_as(inputs))
        return ce(model(inputs, attention_masks=masks), targets)

    loss.after_step = (lambda: after_optimizer_step(model)) if fp8 == "tensorwise" else None
    return model, loss


def run_one(args) -> dict:
    """In the child process: build one implementation, train ``--warmup`` + ``--steps`` steps, report."""
    import torch
    import torch.distributed as dist

    from kfm.model.accounting import flops_per_token
    from kfm.model.config import ModelConfig
    from kfm.train.parallel.distributed import DistInfo

    cuda = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    dist.init_process_group("nccl" if cuda else "gloo", rank=0, world_size=1)
    info = DistInfo(0, 1, 0, device)
    shape = SHAPES[args.shape]
    build = build_kfm if args.impl == "kfm" else build_titan
    model, loss_fn = build(shape, args.layers, args.seq, args, info)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=cuda)
    data = batches(shape, args.batch, args.seq, args.packed, args.doc_len, args.warmup + args.steps)
    after = getattr(loss_fn, "after_step", None)
    if args.impl == "kfm":
        from kfm.train.parallel.fp8 import after_optimizer_step, uses_fp8_all_gather

        after = (lambda: after_optimizer_step(model)) if uses_fp8_all_gather(model) else None
    times, losses = [], []
    for i, (inputs, targets, positions, cuts) in enumerate(data):
        inputs, targets, positions = inputs.to(device), targets.to(device), positions.to(device)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = loss_fn(inputs, targets, positions, cuts)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if after is not None:
            after()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())  # a host sync each step, for both
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    tokens = args.batch * args.seq
    cfg = ModelConfig(vocab_size=shape["vocab"], dim=shape["dim"], n_layers=args.layers, n_heads=shape["heads"],
                      n_kv_heads=shape["kv_heads"], ffn_hidden_dim=shape["ffn"], max_seq_len=args.seq,
                      tie_embeddings=False)
    step_s = statistics.median(times)
    peak = (torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    dist.destroy_process_group()
    return {"impl": args.impl, "tokens_per_s": tokens / step_s, "step_s": step_s,
            "model_flops": flops_per_token(cfg, args.seq, causal=True) * tokens / step_s,
            "peak_gb": peak / 1e9, "last_loss": losses[-1], "losses": losses}


def gpu_facts() -> dict:
    import torch

    from kfm.train.config.peaks import PEAK_FLOPS

    if not torch.cuda.is_available():
        return {"gpu": "cpu (smoke)", "peak": PEAK_FLOPS["cpu"], "torch": torch.__version__, "driver": "-",
                "memory": 0}
    name = torch.cuda.get_device_name(0)
    driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                            capture_output=True, text=True).stdout.strip() or "?"
    key = next((k for k in ("b200", "gb200", "h200", "h100_pcie", "h100_nvl", "a100") if k.split("_")[0] in
                name.lower().replace(" ", "") and (k != "h100_pcie" or "pcie" in name.lower())
                and (k != "h100_nvl" or "nvl" in name.lower())), "h100_sxm")
    return {"gpu": name, "peak": PEAK_FLOPS[key], "peak_key": key, "torch": torch.__version__,
            "cuda": torch.version.cuda, "driver": driver,
            "memory": torch.cuda.get_device_properties(0).total_memory}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for gpu_step.md")
    ap.add_argument("--smoke", action="store_true", help="CPU: tiny shapes, no compile, FP8 emulated")
    ap.add_argument("--shape", default=None, choices=list(SHAPES))
    ap.add_argument("--layers", default="auto")
    ap.add_argument("--seq", type=int, default=None)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--doc-len", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=1, help="kfm/torchtitan pairs per case")
    ap.add_argument("--cases", nargs="+", default=None,
                    help="documents:precision pairs, e.g. one:none packed:tensorwise (precision: none, tensorwise, "
                         "rowwise, mxfp8 on a B200)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--impl", choices=["kfm", "torchtitan"], help=argparse.SUPPRESS)
    ap.add_argument("--fp8", default="none", help=argparse.SUPPRESS)
    ap.add_argument("--packed", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.layers = int(args.layers)
        print("RESULT " + json.dumps(run_one(args)), flush=True)
        return
    facts = gpu_facts()
    smoke = args.smoke or facts["gpu"].startswith("cpu")
    if not args.smoke and facts["memory"] == 0:
        sys.exit("no GPU: run with --smoke")
    shape_name = args.shape or ("tiny" if smoke else "llama3-8b")
    seq = args.seq or (64 if smoke else 8192)
    layers = int(args.layers) if args.layers != "auto" else (
        2 if smoke else auto_layers(SHAPES[shape_name], facts["memory"], seq))
    steps, warmup = args.steps or (2 if smoke else 6), args.warmup or (1 if smoke else 3)
    cases = args.cases or (["one:none", "packed:tensorwise"] if smoke else
                           ["one:none", "packed:none", "one:tensorwise", "packed:tensorwise"])
    rows = []
    for c, case in enumerate(cases):
        mode, recipe = case.split(":")
        results = {"kfm": [], "torchtitan": []}
        for r in range(args.rounds):
            order = ["kfm", "torchtitan"] if (c + r) % 2 == 0 else ["torchtitan", "kfm"]
            for impl in order:
                cmd = [sys.executable, __file__, "--child", "--impl", impl, "--shape", shape_name, "--layers",
                       str(layers), "--seq", str(seq), "--batch", str(args.batch), "--doc-len",
                       str(min(args.doc_len, seq // 2)), "--steps", str(steps), "--warmup", str(warmup),
                       "--fp8", recipe, "--out", str(args.out)]
                cmd += ["--packed"] * (mode == "packed") + ["--smoke"] * smoke + ["--compile"] * (not smoke)
                done = subprocess.run(cmd, capture_output=True, text=True)
                lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
                if done.returncode or not lines:
                    tail = (done.stderr.strip().splitlines() or ["?"])[-1][:160]
                    results[impl].append({"error": tail})
                    print(f"{case} {impl}: failed: {tail}", file=sys.stderr, flush=True)
                    continue
                results[impl].append(json.loads(lines[-1][7:]))
                print(f"{case} {impl}: {results[impl][-1]['tokens_per_s']:.1f} tokens/s", flush=True)
        rows.append((mode, recipe, results))
        # Written after every case, so a run stopped by the suite's time limit keeps what it measured.
        write_table(args.out / "gpu_step.md", facts, shape_name, layers, seq, args.batch, rows, smoke)


def write_table(path: Path, facts: dict, shape: str, layers: int, seq: int, batch: int, rows, smoke: bool) -> None:
    def best(runs: list[dict], key: str):
        ok = [r[key] for r in runs if "error" not in r]
        return statistics.median(ok) if ok else None

    lines = [f"# The training step on one GPU: kfm vs torchtitan{' (smoke run on CPU: the numbers mean nothing)' if smoke else ''}",
             "", f"GPU {facts['gpu']}, torch {facts['torch']}, CUDA {facts.get('cuda', '-')}, driver {facts['driver']}; "
             f"{shape} shapes, {layers} layers, sequence {seq}, batch {batch}; MFU against {facts['peak'] / 1e12:.0f} "
             "TFLOP/s dense bf16. `python bench/gpu/step.py` (bench/gpu/suite.sh).", "",
             "| documents | precision | kfm tokens/s | torchtitan tokens/s | kfm / torchtitan | kfm MFU | torchtitan MFU "
             "| kfm peak GB | torchtitan peak GB | kfm last loss | torchtitan last loss |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for mode, recipe, results in rows:
        k, t = results["kfm"], results["torchtitan"]
        kt, tt = best(k, "tokens_per_s"), best(t, "tokens_per_s")
        km, tm = best(k, "model_flops"), best(t, "model_flops")

        def cell(v, fmt):
            return fmt.format(v) if v is not None else "failed"

        lines.append(f"| {mode} | {'bf16' if recipe == 'none' else 'fp8 ' + recipe} | {cell(kt, '{:,.0f}')} | "
                     f"{cell(tt, '{:,.0f}')} | {cell(kt / tt if kt and tt else None, '{:.3f}')} | "
                     f"{cell(km / facts['peak'] if km else None, '{:.1%}')} | "
                     f"{cell(tm / facts['peak'] if tm else None, '{:.1%}')} | {cell(best(k, 'peak_gb'), '{:.1f}')} | "
                     f"{cell(best(t, 'peak_gb'), '{:.1f}')} | {cell(best(k, 'last_loss'), '{:.3f}')} | "
                     f"{cell(best(t, 'last_loss'), '{:.3f}')} |")
        for impl, runs in results.items():
            for r in runs:
                if "error" in r:
                    lines.append(f"\n{mode} {recipe} {impl} failed: `{r['error']}`")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
