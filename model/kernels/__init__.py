"""Fused operations, each with a plain PyTorch reference beside it.

Triton is optional: nothing here imports it until a kernel runs, and ``require_triton`` turns a kernel that
cannot run (Triton missing, or a CPU tensor outside Triton's interpreter) into an error that names the fix.
"""

from __future__ import annotations

import importlib.util
import os

import torch


def triton_available() -> bool:
    """Whether ``import triton`` can succeed (it is not installed on macOS or Windows)."""
    try:
        return importlib.util.find_spec("triton") is not None
    except ValueError:  # ``sys.modules["triton"] is None``: deliberately made unimportable
        return False


def interpreting() -> bool:
    """Whether Triton kernels run in its interpreter (``TRITON_INTERPRET=1``), on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def require_triton(setting: str, x: torch.Tensor) -> None:
    """Raise a clear error when the Triton kernels that ``setting`` asks for cannot run on ``x``."""
    if not triton_available():
        raise RuntimeError(f"{setting} but triton is not installed: `pip install triton` (Linux), or set it to "
                           "`torch` (plain PyTorch) or `auto`")
    if not x.is_cuda and not interpreting():
        raise RuntimeError(f"{setting} needs CUDA tensors (got {x.device}), or TRITON_INTERPRET=1 to run the "
                           "kernels in Triton's interpreter on CPU (slow; tests); else set it to `torch` or `auto`")
