"""Fused operations. Each kernel's reference is the model's own eager PyTorch code (``kfm.model.layers``
``rms_norm_torch`` and ``swiglu_torch``, ``kfm.model.rope.Rotary.apply``, the ``sdpa`` attention backend), so
the kernels are tested against what the model runs without them.

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


def row_settings(n: int, limit: int = 65536, what: str = "row") -> tuple[int, int]:
    """(BLOCK, num_warps) for a kernel that holds one ``n``-wide row in a block: the next power of two, and more
    warps for wider blocks (Liger-Kernel's rule in ``ops/utils.py`` ``calculate_settings``: 4 below 2048, 8 from
    2048, 16 from 8192, 32 from 32768)."""
    block = 1 << max(n - 1, 0).bit_length()
    if block > limit:
        raise ValueError(f"this kernel supports a {what} up to {limit} wide, got {n}")
    warps = 32 if block >= 32768 else 16 if block >= 8192 else 8 if block >= 2048 else 4
    return block, warps


def contiguous(*tensors: torch.Tensor | None) -> tuple:
    """The tensors as the kernels read them: dense, row-major (``None`` passes through)."""
    return tuple(t.contiguous() if t is not None else None for t in tensors)


def require_triton(setting: str, x: torch.Tensor) -> None:
    """Raise a clear error when the Triton kernels that ``setting`` asks for cannot run on ``x``."""
    if not triton_available():
        raise RuntimeError(f"{setting} but triton is not installed: `pip install triton` (Linux), or set it to "
                           "`torch` (plain PyTorch) or `auto`")
    if not x.is_cuda and not interpreting():
        raise RuntimeError(f"{setting} needs CUDA tensors (got {x.device}), or TRITON_INTERPRET=1 to run the "
                           "kernels in Triton's interpreter on CPU (slow; tests); else set it to `torch` or `auto`")
