"""Throughput accounting: model FLOPs utilisation (MFU) from the model's exact FLOP count, and
peak memory, and a loss-spike detector."""

from __future__ import annotations

import math
import resource
from collections import deque

import torch

from model.accounting import flops_per_token
from model.config import ModelConfig
from train.config import PEAK_FLOPS


def device_peak_flops(setting: str, device: torch.device) -> tuple[str, float]:
    """(name, peak FLOP/s) for ``trainer.device_peak``; ``auto`` reads the CUDA device name."""
    if setting != "auto":
        return setting, PEAK_FLOPS[setting]
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device).upper()
        for key, marker in (("b200", "B200"), ("h200", "H200"), ("h100_sxm", "H100")):
            if marker in name:
                return key, PEAK_FLOPS[key]
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
