"""Mixture-of-experts load balancing outside the gradient, and its metrics.

After every optimizer step the statistics of the step's training forwards (``kfm.model.moe.MoE.take_stats``),
summed over the data-parallel ranks in one all-reduce for all layers, move each layer's expert bias
(auxiliary-loss-free balancing, DeepSeek-V3 section 2.1.2) when the step was applied; every logging window
they become metrics: per layer the max/mean expert load, the fraction of (token, expert) pairs dropped and the
router entropy, and a warning when the load concentrates. No host synchronisation until a window is logged.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.distributed as dist

from kfm.model.moe import moe_layers

log = logging.getLogger("kfm.train")
STATS = ("dropped", "tokens", "entropy", "aux", "forwards")
"""The per-layer statistics after the per-expert loads, in the order they are reduced."""


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over every rank (the data-parallel group is the world until other mesh dimensions land)."""
    t = t.detach().clone()
    dist.all_reduce(t)
    return t


class ExpertBalance:
    """``model``: the engine's model (wrapped or not); ``accum``: micro batches per step (the auxiliary losses'
    gradient is weighted by its inverse, as the language-model loss is); ``collapse_ratio``: the max/mean load
    above which a layer is reported as collapsing (at most 3/4 of the largest possible, ``n_experts / top_k``);
    ``warn``: whether this rank reports it (every rank computes the same metrics)."""

    def __init__(self, model: torch.nn.Module, accum: int, collapse_ratio: float, warn: bool = True) -> None:
        self.layers = moe_layers(model)
        self.collapse_ratio, self.warn = collapse_ratio, warn
        for layer in self.layers:
            layer.aux_loss_scale = 1.0 / accum
            if dist.is_initialized() and dist.get_world_size() > 1 and layer.moe.batch_aux_loss_coef:
                layer.reduce_load = sum_over_ranks
        self.window: torch.Tensor | None = None
        """The summed statistics of the open logging window, (layers, experts + len(STATS))."""

    def after_step(self, applied: bool) -> None:
        """Reduce this step's statistics over the ranks; move the expert biases if the step was applied."""
        stats = [layer.take_stats() for layer in self.layers]
        if not stats or any(s is None for s in stats):
            return
        rows = torch.stack([torch.cat([s["load"], *(s[k].reshape(1) for k in STATS)]) for s in stats])
        if dist.is_initialized():
            dist.all_reduce(rows)
        if applied:
            for layer, row in zip(self.layers, rows):
                layer.update_expert_bias(row[: layer.moe.n_experts], layer.moe.bias_update_rate)
        self.window = rows if self.window is None else self.window + rows

    def metrics(self) -> dict[str, float]:
        """The open window's metrics (one host synchronisation), then a new window."""
        if self.window is None:
            return {}
        rows, self.window = self.window.cpu(), None
        out: dict[str, float] = {}
        ratios, dropped, entropy, aux = [], 0.0, [], []
        for layer, row in zip(self.layers, rows):
            n = layer.moe.n_experts
            load, extra = row[:n], dict(zip(STATS, row[n:].tolist()))
            ratio = (load.max() / load.mean().clamp(min=1e-9)).item()
            ratios.append(ratio)
            pairs = extra["tokens"] * layer.moe.top_k
            dropped += extra["dropped"] / max(pairs, 1.0)
            entropy.append(extra["entropy"] / max(extra["tokens"], 1.0) / math.log(n))
            aux.append(extra["aux"] / max(extra["forwards"], 1.0))
            out[f"moe/load_max_mean/l{layer.index}"] = ratio
            limit = min(self.collapse_ratio, 0.75 * n / layer.moe.top_k)  # n / top_k: every token on the same experts
            if ratio > limit and self.warn:
                log.warning("MoE layer %d: load concentrates (max/mean expert load %.2f > %.2f; %.0f when all tokens "
                            "choose the same %d of the %d experts): the router may be collapsing; raise "
                            "model.moe.bias_update_rate or an auxiliary loss coefficient", layer.index, ratio, limit,
                            n / layer.moe.top_k, layer.moe.top_k, n)
        out |= {"moe/load_max_mean": max(ratios), "moe/dropped_frac": dropped / len(self.layers),
                "moe/router_entropy": sum(entropy) / len(entropy), "moe/aux_loss": sum(aux)}
        biases = [layer.expert_bias.abs().mean().item() for layer in self.layers if layer.expert_bias is not None]
        if biases:
            out["moe/expert_bias_abs"] = sum(biases) / len(biases)
        return out

    def state_dict(self) -> dict:
        """The open window's sums, so that a resumed run logs the same values."""
        return {"window": None if self.window is None else self.window.cpu().tolist()}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        window = state.get("window")
        self.window = None if window is None else torch.tensor(window, device=device)
