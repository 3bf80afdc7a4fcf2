"""Side-by-side CPU benchmarks in which every measurement runs in a fresh process (so that a peak RSS belongs to
one implementation), rounds alternate the implementations, and medians are reported."""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def rss_mb() -> float:
    """This process's resident memory now, MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median_runs(script: str, impls: tuple[str, ...], case: str, rounds: int) -> dict[str, dict[str, float]]:
    """``python script --worker=<impl> --case=<case>`` for every implementation, ``rounds`` times alternating; each
    prints one JSON object of numbers as its last line. The median of each number per implementation."""
    results: dict[str, list[dict]] = {impl: [] for impl in impls}
    for _ in range(rounds):
        for impl in impls:
            out = subprocess.run([sys.executable, script, f"--worker={impl}", f"--case={case}"], check=True,
                                 capture_output=True, text=True).stdout
            results[impl].append(json.loads(out.strip().splitlines()[-1]))
    return {w: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for w, rs in results.items()}


def timed_steps(step, module, steps: int, tokens_per_step: int) -> dict[str, float]:
    """One warm-up call of ``step``, then ``steps`` timed ones: tokens/s, peak RSS, and the step memory (peak RSS
    less the RSS before the warm-up, so the weights count in neither)."""
    before = rss_mb()
    step()
    module.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - t0
    peak = peak_rss_mb()
    return {"tokens_per_s": steps * tokens_per_step / seconds, "peak_mb": peak, "step_mb": peak - before}


def main(doc: str, script: str, cases: dict, impls: tuple[str, ...], base: str, describe, worker, preamble: str,
         extra: tuple[tuple[str, str], ...] = ()) -> None:
    """The command line of a side-by-side benchmark: ``--worker=<impl> --case=<case>`` measures one implementation
    (``worker(case, impl)``, a dict of numbers with ``tokens_per_s``, ``peak_mb``, ``step_mb``, ``max_diff``; printed
    as JSON); otherwise every case runs as ``median_runs`` and prints one table row per implementation, with ratios
    against ``base``. ``extra``: (column title, key) of further numbers, shown with their ratio too."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--cases", nargs="+", choices=list(cases), default=list(cases))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--worker", choices=impls)
    ap.add_argument("--case", choices=list(cases))
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.case, args.worker)))
        return
    print(f"fp32, {args.rounds} alternating rounds per case (each run a fresh process), medians; {preamble}\n")
    titles = ["fwd+bwd tokens/s", "peak RSS MB", "step memory MB", *(t for t, _ in extra), "speed vs HF",
              "step memory vs HF", *(f"{t.removesuffix(' MB')} vs HF" for t, _ in extra), "max diff"]
    print("| case | implementation | " + " | ".join(titles) + " |\n|---|---|" + "---:|" * len(titles))
    for name in args.cases:
        med = median_runs(script, impls, name, args.rounds)
        b = med[base]
        for impl in impls:
            m = med[impl]
            cells = [f"{m['tokens_per_s']:.0f}", f"{m['peak_mb']:.0f}", f"{m['step_mb']:.0f}",
                     *(f"{m[k]:.0f}" for _, k in extra), f"{m['tokens_per_s'] / b['tokens_per_s']:.2f}x",
                     f"{m['step_mb'] / b['step_mb']:.2f}x", *(f"{m[k] / b[k]:.2f}x" for _, k in extra),
                     f"{m['max_diff']:.1e}"]
            print(f"| {describe(name)} | {impl} | " + " | ".join(cells) + " |", flush=True)
