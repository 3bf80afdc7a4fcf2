"""Silence one expected warning of a dependency, and nothing else.

torchao (FP8 training, ``kfm.train.parallel.fp8``) loads its CUDA kernel libraries when it is imported, and
``transformers`` imports it whenever it is installed, to load any model. With a CPU-only torch build those libraries
cannot load, and torchao logs ``Failed to load .../_C_*.so`` for each, into every kfm command's output (``kfm-generate``
prints its text to stdout, behind them). Nothing kfm runs on such a build needs them (FP8 refuses a CPU with its
reason), so there, and only there, the messages are dropped (``kfm.train`` installs the filter on import); with a CUDA torch a
library that fails to load is still reported.
"""

from __future__ import annotations

import logging
import sys


class CpuTorchaoKernels(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        torch = sys.modules.get("torch")
        cpu_build = torch is not None and getattr(torch.version, "cuda", None) is None
        message = record.getMessage()
        return not (cpu_build and message.startswith("Failed to load ") and ".so" in message)


def install() -> None:
    logger = logging.getLogger("torchao")
    if not any(isinstance(f, CpuTorchaoKernels) for f in logger.filters):
        logger.addFilter(CpuTorchaoKernels())
