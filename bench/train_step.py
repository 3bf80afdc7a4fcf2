"""The training step on CPU, this tree against an earlier revision, side by side in one run.

    python bench/train_step.py --run-dir runs/demo [--base 2d0f193] [--steps 40] [--rounds 2]

Two measurements, each alternating base / this tree so that the machine's noise falls on both:

1. **Step time**: ``torchrun --nproc_per_node=2`` pretraining (gloo, FSDP2) of the debug model on the shards and
   tokenizer of ``--run-dir`` (``make demo`` makes them), packed documents with document masking, for
   ``--steps`` steps; the step time is the median over the logged windows after the first of
   ``tokens / tokens_per_s``. The base revision is checked out with ``git worktree`` into a temporary folder
   and run from there (its own module names: the base predates the ``kfm`` namespace).
2. **Per-batch document handling**: what the model does with a batch's document boundaries for all layers of a
   forward, timed alone: at the base, ``Documents.from_cu_seqlens`` (a Python loop over rows) plus one dense
   mask per layer (SDPA's explicit mask, the CPU path; flex and Triton rebuilt theirs per layer likewise); here,
   ``Documents`` from the loader's flat boundaries plus one mask per distinct window, shared by the layers.

Results go to ``bench/results/train_step.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DOC_SCRIPT = r'''
import json, sys, time, torch
new = sys.argv[1] == "new"
batch, seq, layers, windows, reps = (int(a) for a in sys.argv[2:7])
if new:
    from kfm.model.attention import Documents, attention_mask
else:
    from model.attention import Documents, attention_mask
g = torch.Generator().manual_seed(0)
rows = []
for _ in range(batch):
    cuts = sorted(set(torch.randint(1, seq, (seq // 64,), generator=g).tolist()))
    rows.append(torch.tensor([0, *cuts, seq], dtype=torch.int32))
flat = torch.cat([torch.zeros(1, dtype=torch.int32)] + [r[1:] + i * seq for i, r in enumerate(rows)])
pattern = [5 if (i % 2 == 0 and windows > 1) else 0 for i in range(layers)]

def once():
    if new:
        docs = Documents(flat, batch, seq)
        for w in pattern:
            docs.cached(("dense", w), lambda w=w: attention_mask(seq, docs, w))
    else:
        docs = Documents.from_cu_seqlens(rows, seq)
        for w in pattern:
            attention_mask(seq, docs, w)

for _ in range(3):
    once()
t0 = time.perf_counter()
for _ in range(reps):
    once()
print(json.dumps({"ms": (time.perf_counter() - t0) / reps * 1e3}))
'''


def worktree(base: str) -> Path:
    out = Path(tempfile.mkdtemp(prefix="kfm-base-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(out), base], check=True,
                   capture_output=True)
    return out


def step_time(tree: Path, new: bool, run_dir: Path, steps: int, log_every: int) -> float:
    """Median seconds per step over the logged windows after the first."""
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    module = "kfm.train.cli.pretrain" if new else "train.pretrain"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(tree)}
    keys = (("metrics.log_every", "validation.every", "checkpoint.every", "metrics.wandb_mode") if new else
            ("log_every", "val_every", "checkpoint_every", "wandb_mode"))  # the base predates the sub-configs
    values = (log_every, steps * 10, steps * 10, "disabled")
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", module,
            f"run_dir={run_dir}", f"trainer.steps={steps}", *(f"trainer.{k}={v}" for k, v in zip(keys, values)),
            "provenance.enabled=false"]
    proc = subprocess.run(args, cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{tree}: {proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "tokens_per_s" in r][1:]
    tokens_per_step = 2 * 2 * 256  # 2 ranks x local batch 2 x 256 tokens (the demo's trainer and sequence length)
    return statistics.median(tokens_per_step / r["tokens_per_s"] for r in rows)


def doc_time(tree: Path, new: bool, shape: tuple) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", DOC_SCRIPT, "new" if new else "old", *map(str, shape)], cwd=tree,
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["ms"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", default="runs/demo", help="holds tokenizer/ and data/ (make demo)")
    ap.add_argument("--base", default="2d0f193", help="the revision to compare with (before the redesign)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--log-every", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_step.md"))
    args = ap.parse_args()
    src = Path(args.run_dir).resolve()
    if not (src / "data").is_dir() or not (src / "tokenizer").is_dir():
        sys.exit(f"{src} has no tokenizer/ and data/: run `make demo` first (or give --run-dir)")
    base = worktree(args.base)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    trees = {"base": (base, False), "this": (ROOT, True)}
    scratch = Path(tempfile.mkdtemp(prefix="kfm-bench-"))
    try:
        dirs = {}
        for name in trees:
            dirs[name] = scratch / name
            dirs[name].mkdir()
            for sub in ("data", "tokenizer"):
                (dirs[name] / sub).symlink_to(src / sub, target_is_directory=True)
        doc_shapes = [(2, 512, 4, 1, 200), (8, 2048, 4, 2, 20), (4, 4096, 32, 2, 3)]
        docs = {name: {s: [] for s in doc_shapes} for name in trees}
        steps = {name: [] for name in trees}
        for r in range(args.rounds):
            for name, (tree, new) in (trees.items() if r % 2 == 0 else reversed(trees.items())):
                for shape in doc_shapes:
                    docs[name][shape].append(doc_time(tree, new, shape))
                steps[name].append(step_time(tree, new, dirs[name], args.steps, args.log_every))
                print(f"round {r}: {name} step {steps[name][-1] * 1e3:.1f} ms", flush=True)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)
    med = {name: statistics.median(v) for name, v in steps.items()}
    lines = [
        "# Training step on CPU: before and after the redesign (issue 16)",
        "",
        f"`python bench/train_step.py --run-dir {args.run_dir} --base {args.base} --steps {args.steps} "
        f"--rounds {args.rounds}`; base {args.base}, this tree {head} (plus uncommitted changes, if any); "
        f"measured {time.strftime('%Y-%m-%d')} on a 2-core CPU machine, torch {__import__('torch').__version__}, "
        "rounds alternating base/this.",
        "",
        "## Step time: 2 gloo ranks, FSDP2, debug model (dim 128, 4 layers, vocab 65,536), 2 x 256 packed tokens "
        "a rank, document masking on, the demo's shards (in-domain), warm (first logged window dropped)",
        "",
        "| tree | median step (ms) | each round (ms) |",
        "|---|---|---|",
    ]
    for name in trees:
        lines.append(f"| {name} | {med[name] * 1e3:.1f} | {', '.join(f'{x * 1e3:.1f}' for x in steps[name])} |")
    lines += ["", f"Ratio this / base: **{med['this'] / med['base']:.3f}** (below 1: faster).", "",
              "## Per-batch document handling, all layers of one forward (CPU, sdpa path)", "",
              "| batch x seq, layers, windows | base (ms) | this (ms) | base / this |", "|---|---|---|---|"]
    for shape in doc_shapes:
        b, t = statistics.median(docs["base"][shape]), statistics.median(docs["this"][shape])
        lines.append(f"| {shape[0]} x {shape[1]}, {shape[2]} layers, {shape[3]} | {b:.3f} | {t:.3f} | {b / t:.1f}x |")
    lines += ["", "One window: every layer global; two: alternating local (window 5) and global layers. Random "
              "document cuts, about seq/64 documents a row."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
