"""Timing and the device line of the GPU benchmark scripts (they also run on CPU, tiny, to check themselves)."""

from __future__ import annotations

import statistics
import subprocess
import time


def time_ms(fn, iters: int, device) -> float:
    """Median milliseconds of ``fn`` over ``iters`` runs: CUDA events on a GPU, the wall clock elsewhere (mean)."""
    import torch

    if device.type != "cuda":
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) * 1e3 / iters
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def device_line(device) -> tuple[str, str]:
    """(device name, "torch X, triton Y, driver Z") for a results file."""
    import torch
    import triton

    name, driver = "cpu", "n/a"
    if device.type == "cuda":
        name = torch.cuda.get_device_name()
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True).stdout.strip() or "n/a"
    return name, f"torch {torch.__version__}, triton {triton.__version__}, driver {driver}"


def gpu_main(doc: str, script: str, title: str, columns: list[str], cases: dict, tiny: dict, run_case,
             iters: int = 20, warmup: int = 3, options=(), note=lambda args: "") -> None:
    """The command line of a GPU benchmark: ``--out``, ``--iters``, ``--warmup``, ``--tiny`` (tiny shapes on the CPU,
    under ``TRITON_INTERPRET=1``, to check the script; nothing written) and ``options`` (``(flag, kwargs)`` for
    ``add_argument``). ``run_case(name, shape, args, device, dtype)`` returns table rows; the table goes to
    ``<out>/<script stem>_<device>.md`` under a line naming the device, the versions and ``note(args)``."""
    import argparse
    from pathlib import Path

    import torch

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--out", default=str(Path(script).resolve().parent / "results"))
    ap.add_argument("--iters", type=int, default=iters)
    ap.add_argument("--warmup", type=int, default=warmup)
    ap.add_argument("--tiny", action="store_true", help="tiny shapes, for a CPU check under TRITON_INTERPRET=1")
    for flag, kwargs in options:
        ap.add_argument(flag, **kwargs)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.tiny:
        args.iters, args.warmup = 1, 0
    name, versions = device_line(device)
    stem = Path(script).stem
    lines = [f"# {title} on {name}", "",
             f"`python bench/{stem}.py{' --tiny' if args.tiny else ''}`: {dtype}, {versions}; median of {args.iters} "
             f"fwd+bwd after {args.warmup} warm-up{note(args)}", "",
             "| " + " | ".join(columns) + " |", "|---|---|" + "---:|" * (len(columns) - 2)]
    for case, shape in (tiny if args.tiny else cases).items():
        rows = run_case(case, shape, args, device, dtype)
        lines += rows
        print("\n".join(rows), flush=True)
    if args.tiny:
        print("\n".join(lines))
        return
    out = Path(args.out) / f"{stem}_{name.replace(' ', '_').lower()}.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"written to {out}")
