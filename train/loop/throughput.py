"""Throughput accounting: model FLOPs utilisation (MFU) from the model's exact FLOP count, and
peak memory, and a loss-spike detector."""

from __future__ import annotations

import math
import resource
from collections import deque

import torch

from kfm.model.accounting import flops_per_token
from kfm.model.config import ModelConfig
from kfm.train.config import PEAK_FLOPS

GPU_NAMES = (
    # (substring of torch.cuda.get_device_name(), upper case; PEAK_FLOPS key), most specific first.
    ("GB200", "gb200"), ("B200", "b200"), ("H200", "h200"), ("H100 NVL", "h100_nvl"), ("H100 PCIE", "h100_pcie"),
    ("H100", "h100_sxm"), ("H800", "h100_sxm"), ("H20", "h20"), ("A100", "a100"), ("A800", "a100"),
    ("L40S", "l40s"), ("L40", "l40"), ("L4", "l4"), ("MI325X", "mi325x"), ("MI300X", "mi300x"), ("MI250X", "mi250x"),
)
"""H800 and A800 are the export variants of H100 SXM and A100 with the same tensor-core peak."""


def peak_for_gpu(name: str) -> tuple[str, float]:
    """(PEAK_FLOPS key, FLOP/s) for a CUDA device name, or a ValueError asking for ``trainer.metrics.device_peak``."""
    upper = name.upper()
    for marker, key in GPU_NAMES:
        if marker in upper:
            return key, PEAK_FLOPS[key]
    raise ValueError(
        f"trainer.metrics.device_peak=auto does not know the peak of {name!r} (known: {', '.join(m for m, _ in GPU_NAMES)}): "
        "set trainer.metrics.device_peak=<dense bf16 TFLOP/s from its datasheet>, e.g. trainer.metrics.device_peak=400")


def device_peak_flops(setting: str, device: torch.device) -> tuple[str, float]:
    """(name, peak FLOP/s) for ``trainer.metrics.device_peak``: a ``PEAK_FLOPS`` key, a number in TFLOP/s, or ``auto``
    (the CUDA device's name; CPU's nominal 1 TFLOP/s without a GPU)."""
    if setting in PEAK_FLOPS:
        return setting, PEAK_FLOPS[setting]
    if setting != "auto":
        return f"{float(setting):g} TFLOP/s", float(setting) * 1e12
    if device.type == "cuda":
        return peak_for_gpu(torch.cuda.get_device_name(device))
    return "cpu", PEAK_FLOPS["cpu"]


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocations on a GPU, else the peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def mfu(cfg: ModelConfig, seq_len: int, tokens_per_s_per_device: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: training FLOPs (3x the forward: ``flops_per_token`` with the full score
    matrix, PaLM's convention) per second per device, over the device's peak."""
    return 3 * flops_per_token(cfg, seq_len) * tokens_per_s_per_device / peak_flops


class SpikeDetector:
    """``is_spike(loss)``: the loss exceeds the running mean of the last ``window`` accepted losses by
    ``sigmas`` standard deviations (needs a full window first). Spikes do not enter the window."""

    def __init__(self, sigmas: float, window: int) -> None:
        self.sigmas = sigmas
        self.history: deque[float] = deque(maxlen=window)

    def is_spike(self, loss: float) -> bool:
        if self.sigmas > 0 and len(self.history) == self.history.maxlen:
            mean = sum(self.history) / len(self.history)
            std = math.sqrt(sum((x - mean) ** 2 for x in self.history) / (len(self.history) - 1))
            if loss > mean + self.sigmas * std:
                return True
        self.history.append(loss)
        return False

    def state_dict(self) -> dict:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.history.clear()
        self.history.extend(state["history"])
