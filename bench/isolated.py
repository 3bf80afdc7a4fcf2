"""Side-by-side CPU benchmarks in which every measurement runs in a fresh process (so that a peak RSS belongs to
one implementation), rounds alternate the implementations, and medians are reported."""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys


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
