"""Multi-token prediction losses as metrics: the modules' losses reach the gradient, not the logged training loss
(``kfm.model.mtp``), so each depth's loss is logged apart, averaged over the micro batches, steps and data-parallel
ranks of a logging window (one all-reduce per step, no host synchronisation until the window is logged)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from kfm.model.mtp import MultiTokenPrediction


class MTPLosses:
    """``model``: the engine's model (wrapped or not); nothing to do for a model without the modules."""

    def __init__(self, model: torch.nn.Module) -> None:
        found = [m for m in model.modules() if isinstance(m, MultiTokenPrediction)]
        self.mtp = found[0] if found else None
        self.window: torch.Tensor | None = None
        """Summed per-depth losses and the forwards counted, over the open window and all ranks."""

    def after_step(self) -> None:
        stats = self.mtp.take_stats() if self.mtp is not None else None
        if stats is None:
            return
        if dist.is_initialized():
            dist.all_reduce(stats)
        self.window = stats if self.window is None else self.window + stats

    def metrics(self) -> dict[str, float]:
        """``loss/mtp_{k}``: the mean loss of predicting the token k + 1 ahead (one host synchronisation)."""
        if self.window is None:
            return {}
        sums, self.window = self.window.cpu().tolist(), None
        count = max(sums[-1], 1.0)
        return {f"loss/mtp_{k}": total / count for k, total in enumerate(sums[:-1], start=1)}

    def state_dict(self) -> dict:
        return {"window": None if self.window is None else self.window.cpu().tolist()}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        window = state.get("window")
        self.window = None if window is None else torch.tensor(window, device=device)
