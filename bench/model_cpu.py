"""kfm's model against transformers' LlamaForCausalLM with the same config, on CPU: forward +
backward tokens/s and peak memory at a 128k vocabulary, for a small model where the logits dominate memory and
at realistic widths (dim 2048 and 4096, two layers), where the weights and their gradients do.

    python bench/model_cpu.py [--shapes debug d2048 d4096] [--vocab 131072] [--rounds 3]

Each measurement runs in a fresh process (so peak RSS belongs to one model), rounds alternate
kfm / HF, and the report gives medians and ratios. "Step memory" is the peak RSS minus the RSS
before the first step: what a training step adds on top of the weights (activations, logits,
gradients). kfm computes the loss with its chunked linear + cross-entropy; HF materialises the
logits. Both use PyTorch SDPA attention, fp32.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {  # name: (model shape, batch, seq, timed steps)
    "debug": (dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, ffn_hidden_dim=384, tie_embeddings=True), 4, 256, 4),
    "d2048": (dict(dim=2048, n_layers=2, n_heads=16, n_kv_heads=8, ffn_hidden_dim=5632, tie_embeddings=True), 2, 256, 1),
    "d4096": (dict(dim=4096, n_layers=2, n_heads=32, n_kv_heads=8, ffn_hidden_dim=14336, tie_embeddings=True), 1, 256,
              1),
}
"""debug is the debug preset; d2048 and d4096 are two layers at the widths of ~1B and ~8B models (Llama 3.2 1B
and Llama 3 8B head and FFN shapes), batches kept small for two CPU cores."""


def describe(name: str, vocab: int) -> str:
    shape, batch, seq, _ = SHAPES[name]
    return (f"{name}: dim {shape['dim']}, {shape['n_layers']} layers, ffn {shape['ffn_hidden_dim']}, vocab {vocab}, "
            f"batch {batch} x {seq}")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def worker(which: str, args) -> dict:
    import torch

    from kfm.model import ModelConfig, Transformer
    from kfm.train.hf.convert import to_hf_config

    torch.manual_seed(0)
    shape, batch, seq, steps = SHAPES[args.shape]
    cfg = ModelConfig(vocab_size=args.vocab, max_seq_len=seq, **shape)
    tokens = torch.randint(0, args.vocab, (batch, seq))
    targets = torch.roll(tokens, -1, 1)
    if which == "kfm":
        model = Transformer(cfg)
        model.init_weights(seed=0)

        def step():
            model(tokens, targets=targets).backward()
    else:
        from transformers import LlamaForCausalLM

        hf_cfg = to_hf_config(cfg)
        hf_cfg._attn_implementation = "sdpa"
        model = LlamaForCausalLM(hf_cfg)

        def step():
            model(input_ids=tokens, labels=tokens).loss.backward()

    before = rss_mb()
    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"tokens_per_s": steps * tokens.numel() / seconds, "peak_mb": peak, "step_mb": peak - before}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    ap.add_argument("--vocab", type=int, default=131072)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--worker", choices=["kfm", "hf"])
    ap.add_argument("--shape", choices=list(SHAPES), default="debug")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    print(f"fp32, PyTorch SDPA in both, {args.rounds} alternating rounds per shape (each run a fresh process), "
          "medians; step memory = peak RSS - RSS before the first step\n")
    print("| shape | model | fwd+bwd tokens/s | peak RSS MB | step memory MB | kfm/HF speed | kfm/HF step memory |"
          " kfm/HF peak RSS |\n|---|---|---:|---:|---:|---:|---:|---:|")
    for name in args.shapes:
        results: dict[str, list[dict]] = {"kfm": [], "hf": []}
        for _ in range(args.rounds):
            for which in ("kfm", "hf"):
                out = subprocess.run([sys.executable, __file__, f"--worker={which}", f"--shape={name}",
                                      f"--vocab={args.vocab}"], check=True, capture_output=True, text=True).stdout
                results[which].append(json.loads(out.strip().splitlines()[-1]))
        med = {w: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for w, rs in results.items()}
        ratio = {k: med["kfm"][k] / med["hf"][k] for k in ("tokens_per_s", "step_mb", "peak_mb")}
        for w in ("kfm", "hf"):
            m = med[w]
            tail = (f"{ratio['tokens_per_s']:.2f}x | {ratio['step_mb']:.2f}x | {ratio['peak_mb']:.2f}x" if w == "kfm"
                    else " | | ")
            print(f"| {describe(name, args.vocab)} | {w} | {m['tokens_per_s']:.0f} | {m['peak_mb']:.0f} | "
                  f"{m['step_mb']:.0f} | {tail} |", flush=True)


if __name__ == "__main__":
    main()
