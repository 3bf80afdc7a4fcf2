"""kfm's model against transformers' LlamaForCausalLM with the same config, on CPU: forward +
backward tokens/s and peak memory, at a 128k vocabulary where the logits dominate memory.

    python bench/model_cpu.py [--vocab 131072] [--batch 4] [--seq 256] [--steps 4] [--rounds 3]

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

SHAPE = dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, ffn_hidden_dim=384, tie_embeddings=True)  # debug preset


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def worker(which: str, args) -> dict:
    import torch

    from model import ModelConfig, Transformer
    from train.hf_convert import to_hf_config

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=args.vocab, max_seq_len=args.seq, **SHAPE)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq))
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
    for _ in range(args.steps):
        step()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"tokens_per_s": args.steps * tokens.numel() / seconds, "peak_mb": peak, "step_mb": peak - before}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=131072)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--worker", choices=["kfm", "hf"])
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    results: dict[str, list[dict]] = {"kfm": [], "hf": []}
    passthrough = [f"--vocab={args.vocab}", f"--batch={args.batch}", f"--seq={args.seq}", f"--steps={args.steps}"]
    for _ in range(args.rounds):
        for which in ("kfm", "hf"):
            out = subprocess.run([sys.executable, __file__, f"--worker={which}", *passthrough], check=True,
                                 capture_output=True, text=True).stdout
            results[which].append(json.loads(out.strip().splitlines()[-1]))
    med = {w: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for w, rs in results.items()}
    print(f"debug-shaped model (dim 128, 4 layers), vocab {args.vocab}, batch {args.batch} x {args.seq}, fp32, "
          f"{args.rounds} alternating rounds, medians:")
    for w in ("kfm", "hf"):
        m = med[w]
        print(f"  {w:4s} fwd+bwd {m['tokens_per_s']:9.0f} tokens/s   peak RSS {m['peak_mb']:7.0f} MB   "
              f"step memory {m['step_mb']:7.0f} MB")
    print(f"  kfm / HF: speed {med['kfm']['tokens_per_s'] / med['hf']['tokens_per_s']:.2f}x, "
          f"step memory {med['kfm']['step_mb'] / med['hf']['step_mb']:.2f}x, "
          f"peak RSS {med['kfm']['peak_mb'] / med['hf']['peak_mb']:.2f}x")


if __name__ == "__main__":
    main()
