"""What provenance recording costs a training run, measured side by side on the debug model.

    python bench/provenance.py [--data-dir runs/demo/data] [--steps 60] [--checkpoint-every 20]
                               [--out bench/results/provenance.md]

Two trainers in one process, identical but for ``provenance.enabled``, take their steps alternately,
so both see the same machine load; each step and each checkpoint is timed, and the recorder's own time
at each checkpoint (a checkpoint's DCP save varies more than the record costs). Nothing is recorded per
step (the data read is derived from the sample count at checkpoint time), so the per-step ratio should
be 1 within noise; the cost is the weight digest at each checkpoint, reported per checkpoint and
amortised over the checkpoint interval. Then the peak memory of hashing a ~250 MB model (in a fresh
process): hashing streams tensor by tensor, so the peak grows by far less than a copy of the model.

Needs token shards (``make demo`` builds ``runs/demo/data``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

import kfm.train.cli.pretrain  # noqa: E402,F401  (registers the job schema)
from kfm.train.loop.trainer import Trainer  # noqa: E402
from kfm.train.parallel.distributed import init_distributed  # noqa: E402

MEMORY_SCRIPT = """
import json, resource, time
from kfm.model import ModelConfig, Transformer
from kfm.train.provenance.digests import digest_tensors, module_tensors
cfg = ModelConfig(vocab_size=32768, dim=512, n_layers=8, n_heads=8, n_kv_heads=8, ffn_hidden_dim=1536, max_seq_len=64)
model = Transformer(cfg)
model.init_weights(seed=0)
size = sum(p.numel() * 4 for p in model.parameters())
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t0 = time.perf_counter()
digest_tensors(module_tensors(model))
seconds = time.perf_counter() - t0
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"size": size, "growth": after - before, "seconds": seconds}))
"""


def hashing_memory() -> dict:
    """Size of a ~250 MB model, how much the peak memory of a fresh process grew while hashing it, and the time."""
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def make_trainer(data_dir: str, run_dir: Path, enabled: bool, steps: int, every: int) -> Trainer:
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="pretrain", overrides=[
            f"run_dir={run_dir}", f"data_dir={data_dir}", f"trainer.steps={steps}", f"trainer.checkpoint.every={every}",
            "trainer.metrics.wandb_mode=disabled", "trainer.validation.every=100000", f"provenance.enabled={str(enabled).lower()}"])
    return Trainer(OmegaConf.to_object(cfg), init_distributed(), hooks=[])


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default="runs/demo/data")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--checkpoint-every", type=int, default=10)
    ap.add_argument("--out", default="bench/results/provenance.md")
    ap.add_argument("--memory-only", action="store_true",
                    help="only measure the peak memory of hashing a ~250 MB model; print it as JSON")
    args = ap.parse_args()
    if args.memory_only:
        print(json.dumps(hashing_memory()))
        return
    if not (Path(args.data_dir) / "manifest.json").is_file():
        sys.exit(f"{args.data_dir}/manifest.json not found: run `make demo` first (or pass --data-dir)")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {on: make_trainer(args.data_dir, Path(tmp) / f"on_{on}", on, args.steps, args.checkpoint_every)
                    for on in (True, False)}
        start = {on: timed(lambda t=t: t.recorder.start(t.engine)) for on, t in trainers.items()}
        recording: list[float] = []  # time inside the recorder at each checkpoint (digest + record + chain file)
        recorder = trainers[True].recorder
        plain_checkpoint = recorder.checkpoint

        def timed_checkpoint(*a, **kw):
            t0 = time.perf_counter()
            out = plain_checkpoint(*a, **kw)
            recording.append(time.perf_counter() - t0)
            return out

        recorder.checkpoint = timed_checkpoint
        steps = {True: [], False: []}
        saves = {True: [], False: []}
        for step in range(1, args.steps + 1):
            for on in ((True, False) if step % 2 else (False, True)):  # alternate which goes first
                t = trainers[on]
                steps[on].append(timed(t.train_step))
                if step % args.checkpoint_every == 0:
                    saves[on].append(timed(t.save))
        ledger = (Path(tmp) / "on_True" / "provenance" / "ledger.jsonl").read_text().splitlines()
    warm = slice(5, None)  # the first steps pay one-off costs
    step_on, step_off = statistics.median(steps[True][warm]), statistics.median(steps[False][warm])
    save_on, save_off = statistics.median(saves[True]), statistics.median(saves[False])
    per_ckpt = statistics.median(recording)
    pairs = [a / b for a, b in zip(steps[True][warm], steps[False][warm])]
    paired = statistics.median(pairs)
    q1, _, q3 = statistics.quantiles(pairs, n=4)
    mem = hashing_memory()
    lines = [
        "# Provenance overhead (debug model, 1 process, CPU)",
        "",
        f"`python bench/provenance.py --steps {args.steps} --checkpoint-every {args.checkpoint_every}`; "
        "two trainers stepping alternately in one process, medians.",
        "",
        "| | provenance on | off | on / off |",
        "|---|---|---|---|",
        f"| training step | {step_on * 1e3:.1f} ms | {step_off * 1e3:.1f} ms | {paired:.4f} (median of the "
        f"{len(pairs)} same-step ratios; their interquartile range {q1:.3f}-{q3:.3f}) |",
        f"| checkpoint (DCP save + record) | {save_on * 1e3:.1f} ms | {save_off * 1e3:.1f} ms | {save_on / save_off:.3f} |",
        f"| run start (origin record) | {start[True] * 1e3:.1f} ms | {start[False] * 1e3:.1f} ms | |",
        "",
        f"- records written: {len(ledger)} (origin + {len(saves[True])} checkpoints)",
        f"- recording at a checkpoint (weight digest, record, chain file; timed inside the recorder): "
        f"{per_ckpt * 1e3:.1f} ms; amortised over {args.checkpoint_every} steps: "
        f"{per_ckpt / (args.checkpoint_every * step_off) * 100:.2f}% of a step; over 100 steps (the demo's "
        f"cadence): {per_ckpt / (100 * step_off) * 100:.2f}%",
        f"- hashing a {mem['size'] / 1e6:.0f} MB fp32 model in a fresh process: {mem['seconds']:.2f} s "
        f"({mem['size'] / mem['seconds'] / 1e9:.2f} GB/s), peak memory grew by {mem['growth'] / 1e6:.1f} MB "
        f"({mem['growth'] / mem['size'] * 100:.1f}% of the model)",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
