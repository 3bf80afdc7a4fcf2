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
