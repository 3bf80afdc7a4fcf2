"""Mixture of experts (``kfm.model.config.MoEConfig``): router, routed SwiGLU experts, shared experts.

For the tokens ``x`` (T, D) of a micro batch, one MoE layer computes::

    logits  = x W_r^T                                    (T, E), in fp32
    weights, experts = route(logits, bias)               (T, K): top-k by score (+ bias), groups, normalise, scale
    plan    = dispatch(experts)                          the (token, choice) pairs sorted by expert, stably
    xp      = x[plan.src]                                permute: each expert's tokens contiguous
    yp      = W2_e (silu(W1_e xp) * W3_e xp)             grouped GEMMs over the expert groups (W1, W3 as one)
    y[t]    = sum_k weights[t, k] yp[plan.pos[t, k]]     unpermute, in fp32
    y      += shared(x)                                  then RMSNorm(y) with ``post_norm`` (A.X K1)

Every step has a plain PyTorch version here, the reference of its kernel in ``kfm.model.kernels``
(``router``, ``moe_dispatch``, ``grouped_gemm``). Balancing state lives outside the gradient: the per-expert
bias is a buffer (saved with the weights, moved by ``update_expert_bias`` from the load the trainer sums over the
data-parallel ranks), the loads and router statistics of the training forwards accumulate in ``stats`` until
``take_stats``. The auxiliary losses are added to the gradient, not to the returned loss (as Megatron-LM's
``MoEAuxLossAutoScaler``): the logged loss stays the language-model loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kfm.model.config import ExpertGemm, ModelConfig, MoEConfig, ModelRuntime
from kfm.model.layers import FeedForward, KernelChoice, RMSNorm, swiglu_torch


def router_scores(logits: torch.Tensor, score_func: str) -> torch.Tensor:
    """Scores (T, E) in fp32: softmax over the experts, or a sigmoid each."""
    logits = logits.float()
    return logits.softmax(-1) if score_func == "softmax" else logits.sigmoid()


def choose_torch(scores: torch.Tensor, bias: torch.Tensor | None, cfg: MoEConfig) -> torch.Tensor:
    """Experts (T, K) int64 by score + ``bias`` (the bias only chooses), in descending order, within the
    ``topk_group`` best groups when ``n_group > 1`` (a group's score: the sum of its two best): the reference of
    ``kfm.model.kernels.router``."""
    pick = scores.detach() if bias is None else scores.detach() + bias.float()
    if cfg.n_group > 1:
        tokens = pick.shape[0]
        grouped = pick.view(tokens, cfg.n_group, -1)
        best = grouped.topk(2, dim=-1).values.sum(-1).topk(cfg.topk_group, dim=-1).indices
        allowed = torch.zeros(tokens, cfg.n_group, dtype=torch.bool, device=pick.device).scatter_(1, best, True)
        pick = grouped.masked_fill(~allowed[..., None], float("-inf")).view(tokens, -1)
    return pick.topk(cfg.top_k, dim=-1).indices


def route_weights(scores: torch.Tensor, experts: torch.Tensor, cfg: MoEConfig) -> torch.Tensor:
    """The weights (T, K) fp32 of the chosen experts: their scores, divided by their sum with ``norm_topk_prob``,
    times ``routed_scaling_factor`` (differentiable in ``scores``)."""
    weights = scores.gather(1, experts)
    if cfg.norm_topk_prob:
        weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
    return weights * cfg.routed_scaling_factor


def route_torch(logits: torch.Tensor, bias: torch.Tensor | None, cfg: MoEConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights (T, K) fp32, experts (T, K) int64): the reference router (``choose_torch``, ``route_weights``)."""
    scores = router_scores(logits, cfg.score_func)
    experts = choose_torch(scores, bias, cfg)
    return route_weights(scores, experts, cfg), experts


@dataclass
class Dispatch:
    """Where each (token, choice) pair goes: ``src`` (M,) the token of each permuted row, ``pairs`` (M,) its flat
    pair index ``t * K + k``, ``pos`` (T, K) the row of each pair (-1: dropped), ``counts`` (E,) rows per expert,
    ``load`` (E,) pairs routed to each expert before any drop, ``dropped`` the number of pairs dropped."""

    src: torch.Tensor
    pairs: torch.Tensor
    pos: torch.Tensor
    counts: torch.Tensor
    load: torch.Tensor
    dropped: torch.Tensor


def dispatch(experts: torch.Tensor, n_experts: int, capacity: int | None = None) -> Dispatch:
    """Sort the (token, choice) pairs by expert, stably (token order within an expert). Dropless without
    ``capacity`` (and then free of host synchronisation); with it, an expert keeps its first ``capacity`` pairs."""
    tokens, k = experts.shape
    flat = experts.reshape(-1)
    pairs = flat.numel()
    order = torch.argsort(flat, stable=True)
    load = torch.zeros(n_experts, dtype=torch.long, device=flat.device).scatter_add_(0, flat, torch.ones_like(flat))
    rows = torch.arange(pairs, device=flat.device)
    if capacity is None:
        pos = torch.empty_like(flat).scatter_(0, order, rows)
        return Dispatch(order // k, order, pos.view(tokens, k), load, load,
                        torch.zeros((), dtype=torch.long, device=flat.device))
    starts = load.cumsum(0) - load
    kept = order[rows - starts[flat[order]] < capacity]
    pos = torch.full_like(flat, -1).scatter_(0, kept, torch.arange(kept.numel(), device=flat.device))
    return Dispatch(kept // k, kept, pos.view(tokens, k), load.clamp(max=capacity), load,
                    torch.tensor(pairs - kept.numel(), device=flat.device))


def unpermute_torch(yp: torch.Tensor, pos: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """y[t] = sum_k weights[t, k] * yp[pos[t, k]] (pairs with pos -1 skipped), summed in fp32, in ``yp``'s dtype."""
    gathered = yp[pos.clamp(min=0)].float()
    w = torch.where(pos >= 0, weights.float(), 0.0)
    return (gathered * w[..., None]).sum(1).to(yp.dtype)


def expert_mm_loop(x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``x[rows of e] @ w[e]^T`` for each expert group, one matmul each: the reference (it reads ``counts`` on the
    host)."""
    parts = x.split(counts.tolist())
    return torch.cat([part @ w[e].t() for e, part in enumerate(parts)]) if parts else x.new_zeros(0, w.shape[1])


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient dense (``torch._grouped_mm``'s backward refuses the
    expanded gradients that e.g. ``.sum()`` produces)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


def expert_mm_grouped(x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """The same with one ``torch._grouped_mm`` call (offsets are the groups' ends; no host synchronisation)."""
    offs = counts.cumsum(0).to(torch.int32)
    return _ContiguousGrad.apply(torch._grouped_mm(x, w.transpose(-2, -1), offs=offs))


def grouped_mm_available() -> bool:
    return hasattr(torch, "_grouped_mm")


def grouped_mm_aligned(x: torch.Tensor, widths: tuple[int, ...]) -> bool:
    """Whether rows of every width in ``widths`` are a multiple of 16 bytes, as ``torch._grouped_mm`` requires."""
    return all(w * x.element_size() % 16 == 0 for w in widths)


def expert_gemm_impl(setting: str, x: torch.Tensor, triton_ok: bool, widths: tuple[int, ...]) -> str:
    """The implementation ``model_runtime.expert_gemm`` = ``setting`` runs on ``x`` (``widths``: the model and
    expert widths): ``auto`` is ``grouped_mm`` on CPU and for bf16 on CUDA (where ``torch._grouped_mm`` has
    kernels) when the widths are 16-byte aligned, else ``triton`` where kfm's kernels run, else ``loop``."""
    fits = grouped_mm_available() and grouped_mm_aligned(x, widths)
    if setting != ExpertGemm.auto:
        if setting == ExpertGemm.grouped_mm and not fits:
            raise RuntimeError(f"model_runtime.expert_gemm=grouped_mm needs torch._grouped_mm (torch >= 2.8) and "
                               f"widths {widths} whose rows are multiples of 16 bytes in {x.dtype}: choose triton "
                               "or loop, or widths that are multiples of 8")
        return setting
    if fits and (not x.is_cuda or x.dtype == torch.bfloat16):
        return ExpertGemm.grouped_mm
    return ExpertGemm.triton if triton_ok else ExpertGemm.loop


class Router(nn.Module):
    """The router's projection, computed in fp32 (as EXAONE-MoE keeps its router; a module of its own so that
    parameter-gathering wrappers such as ZeRO-3, which gather on a module's forward, see its weight used)."""

    def __init__(self, dim: int, n_experts: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_experts, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.float(), self.weight.float())


class Experts(nn.Module):
    """``n`` SwiGLU experts as two stacked weights in ``nn.Linear``'s (out, in) layout: ``w13`` (n, 2 * hidden, dim),
    each expert's gate rows (``w1``) then its up rows (``w3``), so one grouped GEMM computes both (as transformers'
    MoE classes store ``gate_up_proj``), and ``w2`` (n, dim, hidden)."""

    def __init__(self, n: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.w13 = nn.Parameter(torch.empty(n, 2 * hidden, dim))
        self.w2 = nn.Parameter(torch.empty(n, dim, hidden))

    def forward(self, xp: torch.Tensor, counts: torch.Tensor, impl: str, triton_swiglu: bool) -> torch.Tensor:
        if impl == ExpertGemm.triton:
            from kfm.model.kernels.grouped_gemm import grouped_mm as mm
        else:
            mm = expert_mm_grouped if impl == ExpertGemm.grouped_mm else expert_mm_loop
        a, b = mm(xp, self.w13, counts).chunk(2, dim=-1)
        if triton_swiglu:
            from kfm.model.kernels.swiglu import swiglu

            return mm(swiglu(a, b), self.w2, counts)
        return mm(swiglu_torch(a, b), self.w2, counts)


def balance_loss(scores: torch.Tensor, experts: torch.Tensor, rows: int, n_experts: int,
                 reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """``mean over rows of sum_i f_i P_i``: per row, ``f_i`` the fraction of its (token, choice) pairs that chose
    expert i times ``E`` (1 everywhere when balanced), ``P_i`` the mean of its tokens' normalised scores for i
    (DeepSeek-V3 eq. 17-20 with one row per sequence; Switch Transformer's loss with all tokens as one row).
    ``reduce`` (one row only) sums the choice counts and token count over the data-parallel ranks, so that ``f``
    is the global batch's (Qwen's global-batch balance loss, arXiv 2501.11873); ``P`` stays local."""
    k = experts.shape[1]
    probs = scores / scores.sum(-1, keepdim=True)
    chosen = torch.zeros_like(probs).scatter_(1, experts, 1.0).view(rows, -1, n_experts)
    counts, tokens = chosen.sum(1), chosen.new_full((), float(chosen.shape[1]))
    if reduce is not None:
        both = reduce(torch.cat([counts.reshape(-1), tokens.reshape(1)]))
        counts, tokens = both[:-1].view(rows, n_experts), both[-1]
    f = counts * n_experts / (k * tokens)
    return (f * probs.view(rows, -1, n_experts).mean(1)).sum(-1).mean()


class _AddToGradient(torch.autograd.Function):
    """Returns ``out`` unchanged; in the backward, ``aux`` receives a gradient of one, so minimising the training
    loss also minimises ``aux`` while the loss's value stays that of the language model."""

    @staticmethod
    def forward(ctx, out, aux):
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad):
        return grad, torch.ones((), dtype=torch.float32, device=grad.device)


def in_backward() -> bool:
    """Whether this forward is a recomputation inside the backward (activation checkpointing)."""
    return torch._C._current_graph_task_id() != -1


class MoE(nn.Module):
    """Router + routed experts + optional shared experts, replacing a dense feed-forward layer.

    ``stats`` (after training forwards): per-expert load (pairs routed), pairs dropped, tokens, summed router
    entropy and summed auxiliary loss; ``take_stats`` returns and clears them. ``aux_loss_scale`` weights the
    auxiliary losses' gradient (the trainer sets 1 / gradient-accumulation steps)."""

    def __init__(self, cfg: ModelConfig, runtime: ModelRuntime, kernels: KernelChoice, index: int = 0) -> None:
        super().__init__()
        m = cfg.moe
        self.moe, self.index = m, index
        self.router = Router(cfg.dim, m.n_experts)
        self.register_buffer("expert_bias", torch.zeros(m.n_experts) if m.expert_bias else None)
        self.experts = Experts(m.n_experts, cfg.dim, m.expert_hidden_dim)
        self.shared = (FeedForward(cfg.dim, m.n_shared_experts * m.expert_hidden_dim, kernels)
                       if m.n_shared_experts else None)
        self.post_norm = RMSNorm(cfg.dim, cfg.norm_eps, kernels) if m.post_norm else None
        self.kernels, self.gemm_setting = kernels, runtime.expert_gemm
        self._gemm: dict[tuple, str] = {}
        self.aux_loss_scale = 1.0
        self.reduce_load: Callable[[torch.Tensor], torch.Tensor] | None = None
        """Sums a tensor over the data-parallel ranks (set by the trainer; the model itself knows no ranks): the
        batch balance loss then counts the choices of the global batch."""
        self.stats: dict[str, torch.Tensor] | None = None

    def in_weights(self) -> list[torch.Tensor]:
        """Router, experts' in-projections, shared experts' in-projections (``Transformer.init_weights``' order)."""
        shared = self.shared.in_weights() if self.shared is not None else []
        return [self.router.weight, self.experts.w13, *shared]

    def out_weights(self) -> list[torch.Tensor]:
        return [self.experts.w2, *(self.shared.out_weights() if self.shared is not None else [])]

    def choose(self, logits: torch.Tensor, scores: torch.Tensor, use_triton: bool) -> torch.Tensor:
        if use_triton:
            from kfm.model.kernels.router import route_choice

            m = self.moe
            return route_choice(logits.detach(), self.expert_bias, m.top_k, m.score_func, m.n_group, m.topk_group)[1]
        return choose_torch(scores, self.expert_bias, self.moe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, m = x.shape, self.moe
        x2 = x.reshape(-1, shape[-1])
        tokens = x2.shape[0]
        triton = self.kernels(x2)
        logits = self.router(x2)
        scores = router_scores(logits, m.score_func)
        experts = self.choose(logits, scores, triton)
        weights = route_weights(scores, experts, m)
        capacity = None  # dropless; a capacity applies in training only, so evaluation and exports see every token
        if m.capacity_factor and self.training:
            capacity = math.ceil(m.capacity_factor * tokens * m.top_k / m.n_experts)
        plan = dispatch(experts, m.n_experts, capacity)
        kind = (x2.device.type, x2.dtype)
        if kind not in self._gemm:
            widths = (x2.shape[-1], self.experts.w2.shape[-1])
            self._gemm[kind] = expert_gemm_impl(self.gemm_setting, x2, triton, widths)
        if triton:
            from kfm.model.kernels.moe_dispatch import permute, unpermute

            yp = self.experts(permute(x2, plan.src, plan.pos), plan.counts, self._gemm[kind], True)
            y = unpermute(yp, plan.pos, weights, plan.src, plan.pairs)
        else:
            y = unpermute_torch(self.experts(x2[plan.src], plan.counts, self._gemm[kind], False), plan.pos, weights)
        if self.shared is not None:
            y = y + self.shared(x2)
        if self.post_norm is not None:
            y = self.post_norm(y)
        if self.training:
            y = self._balance(y, logits, scores, experts, plan, shape[0] if len(shape) == 3 else 1)
        return y.view(shape)

    def _balance(self, y: torch.Tensor, logits: torch.Tensor, scores: torch.Tensor, experts: torch.Tensor,
                 plan: Dispatch, rows: int) -> torch.Tensor:
        """With auxiliary losses, attach them to ``y``'s gradient; record this forward's statistics (not again when
        activation checkpointing recomputes the forward in the backward)."""
        m = self.moe
        aux = torch.zeros((), device=y.device)
        if m.seq_aux_loss_coef:
            aux = aux + m.seq_aux_loss_coef * balance_loss(scores, experts, rows, m.n_experts)
        if m.batch_aux_loss_coef:
            aux = aux + m.batch_aux_loss_coef * balance_loss(scores, experts, 1, m.n_experts, self.reduce_load)
        if m.z_loss_coef:
            aux = aux + m.z_loss_coef * torch.logsumexp(logits.float(), -1).pow(2).mean()
        if not in_backward():  # a recomputation must save the same tensors: only these, taken without gradient, skip
            self._record(logits, scores, plan, aux)
        if m.aux_losses and y.requires_grad:
            y = _AddToGradient.apply(y, aux * self.aux_loss_scale)
        return y

    @torch.no_grad()
    def _record(self, logits: torch.Tensor, scores: torch.Tensor, plan: Dispatch, aux: torch.Tensor) -> None:
        probs = scores / scores.sum(-1, keepdim=True)
        entropy = -(probs * probs.clamp(min=1e-20).log()).sum()
        new = {"load": plan.load.float(), "dropped": plan.dropped.float(),
               "tokens": logits.new_full((), float(logits.shape[0])), "entropy": entropy,  # fills: no host copy
               "aux": aux.detach().float(), "forwards": logits.new_ones(())}
        if self.stats is None:
            self.stats = new
        else:
            for key, value in new.items():
                self.stats[key] += value

    def take_stats(self) -> dict[str, torch.Tensor] | None:
        """The statistics gathered since the last call (None if no training forward ran), and clear them."""
        stats, self.stats = self.stats, None
        return stats

    @torch.no_grad()
    def update_expert_bias(self, load: torch.Tensor, rate: float) -> None:
        """Move the bias towards equal load: up by ``rate`` for experts below the mean load, down above it
        (DeepSeek-V3, section 2.1.2). ``load``: pairs routed to each expert, summed over the data-parallel ranks."""
        if self.expert_bias is not None:
            load = load.float()
            self.expert_bias += rate * torch.sign(load.mean() - load)


def moe_layers(module: nn.Module) -> list[MoE]:
    """The MoE layers of a model, wrapped or not, in depth order."""
    return [m for m in module.modules() if isinstance(m, MoE)]
