"""Dense bf16 peaks of accelerators, for MFU (``trainer.metrics.device_peak``)."""

from __future__ import annotations

import math

PEAK_FLOPS = {
    # Dense bf16 tensor-core peak per device, FLOP/s, without sparsity, from the vendors' datasheets:
    # NVIDIA A100 datasheet 312 TFLOP/s; L4 121, L40 181 and L40S 362 (half of 242 / 362 / 733 with sparsity);
    # H100 datasheet SXM 989, PCIe 756, NVL 835 (half of 1,979 / 1,513 / 1,671); H200 SXM 989; H20 148;
    # HGX B200 2,250 per GPU (4.5 PFLOP/s with sparsity); GB200 NVL72 2,500 per GPU (360 PFLOP/s sparse over 72). AMD Instinct
    # datasheets: MI300X and MI325X 1,307 TFLOP/s, MI250X 383.
    "a100": 312e12,
    "l4": 121e12,
    "l40s": 362e12,
    "l40": 181e12,
    "h100_sxm": 989e12,
    "h100_pcie": 756e12,
    "h100_nvl": 835e12,
    "h200": 989e12,
    "h20": 148e12,
    "b200": 2250e12,
    "gb200": 2500e12,
    "mi300x": 1307e12,
    "mi325x": 1307e12,
    "mi250x": 383e12,
    # A nominal figure so that MFU arithmetic runs (and is tested) on CPU; not a measured peak.
    "cpu": 1e12,
}


def is_positive_number(text: str) -> bool:
    """A finite number above zero (``inf`` and ``nan`` are not peaks)."""
    try:
        return math.isfinite(float(text)) and float(text) > 0
    except ValueError:
        return False
