"""Activation memory of one block, read off kfm's own code: the block runs forward on the meta device (no memory,
any size) under ``saved_tensors_hooks``, and the distinct storages autograd keeps for the backward are summed.
So the count follows the model as written (GQA or latent attention, QK-norm, dense or MoE with its dispatch
buffers, the fp32 parts of the norms) and changes with it, with no hand-kept table of coefficients.

Attention itself is replaced by a stand-in that keeps what a flash kernel keeps (q, k, v, the output and one
float per query and head); the math path of SDPA, which keeps the score matrix, is not what runs at scale. Two
kernel paths: ``torch`` (what runs on CPU: the norms and SwiGLU keep fp32 intermediates) and ``fused`` (what runs on
a GPU with kfm's Triton kernels: stand-ins keep what ``RMSNormFunction`` (input and one fp32 per token),
``SwiGLUFunction`` (both inputs) and ``RoPEFunction`` (nothing per token) save).
"""

from __future__ import annotations

import functools
from contextlib import ExitStack
from dataclasses import replace
from unittest import mock

import torch
from torch import nn

from kfm.model.config import ModelConfig, ModelRuntime
from kfm.model.layers import KernelChoice, RMSNorm, TransformerBlock
from kfm.model.moe import MoE
from kfm.model.rope import Rotary, rope_tables


TRACE_ONLY = ("a stand-in for counting saved activations on the meta device: the traced block never runs "
              "backward")


class _FlashLike(torch.autograd.Function):
    """The output of attention as a flash kernel's forward leaves it: saves q, k, v, out and the row statistics."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError(TRACE_ONLY)


def _flash_like(q, k, v, docs, window, scale=None):
    return _FlashLike.apply(q, k, v)


class _Saves(torch.autograd.Function):
    """A fused kernel's output (``like``'s shape and dtype) that keeps ``kept`` for its backward."""

    @staticmethod
    def forward(ctx, like, *kept):
        ctx.save_for_backward(*kept)
        return torch.empty_like(like)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError(TRACE_ONLY)


class _GroupedMM(torch.autograd.Function):
    """``torch._grouped_mm``'s output (rows x the weights' output width), keeping the rows as its backward does
    (the weights are parameters, not counted). Its meta kernel takes bf16 only, so tracing uses this."""

    @staticmethod
    def forward(ctx, x, width):
        ctx.save_for_backward(x)
        return x.new_empty(x.shape[0], width)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError(TRACE_ONLY)


def _grouped_mm(x, w, counts):
    return _GroupedMM.apply(x, w.shape[1])


def _fused_norm(x, weight, eps, residual=None):
    x = x if residual is None else x + residual
    rstd = x.new_empty(x.shape[:-1], dtype=torch.float32)
    return _Saves.apply(x, x, rstd), x


def _fused_swiglu(a, b):
    return _Saves.apply(a, a, b)


def _fused_rope(self, x):
    return _Saves.apply(x)


def _fused_kernels() -> ExitStack:
    stack = ExitStack()
    stack.enter_context(mock.patch("kfm.model.layers.rms_norm_torch", _fused_norm))
    stack.enter_context(mock.patch("kfm.model.layers.swiglu_torch", _fused_swiglu))
    stack.enter_context(mock.patch("kfm.model.moe.swiglu_torch", _fused_swiglu))
    stack.enter_context(mock.patch.object(Rotary, "apply", _fused_rope))
    return stack


def _saved_bytes(module: nn.Module, run) -> int:
    """Bytes of the distinct storages autograd saves while ``run()`` runs, the module's parameters left out."""
    params = {p.untyped_storage()._cdata for p in module.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage._cdata not in params:
            seen[storage._cdata] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(seen.values())


def narrowed(cfg: ModelConfig, tp: int) -> ModelConfig:
    """The part of the model one tensor-parallel rank computes: heads and feed-forward width divided by ``tp``."""
    if tp == 1:
        return cfg
    return replace(cfg, n_heads=cfg.n_heads // tp, n_kv_heads=max(cfg.n_kv_heads // tp, 1),
                   ffn_hidden_dim=cfg.ffn_hidden_dim // tp, head_dim=cfg.head_size)


def block_bytes_per_token(cfg: ModelConfig, layer: int, seq: int, dtype: torch.dtype, tp: int = 1,
                          kernels: str = "fused") -> float:
    """Bytes block ``layer`` keeps for the backward per token of a ``seq``-token sequence, in compute ``dtype``, on
    one of ``tp`` tensor-parallel ranks (its heads and feed-forward slice; norms and residuals whole), with the
    ``kernels`` path (``torch`` or ``fused``)."""
    key = (repr(cfg), layer, seq, dtype, tp, kernels)
    if key not in _CACHE:
        with _fused_kernels() if kernels == "fused" else ExitStack(), \
                mock.patch("kfm.model.moe.expert_mm_grouped", _grouped_mm):
            _CACHE[key] = _block_bytes(narrowed(cfg, tp), layer, seq, dtype)
    return _CACHE[key]


_CACHE: dict[tuple, float] = {}


def _block_bytes(cfg: ModelConfig, layer: int, seq: int, dtype: torch.dtype) -> float:
    kernels = KernelChoice()
    with torch.device("meta"):
        ffn = MoE(cfg, ModelRuntime(), kernels, layer) if cfg.is_moe(layer) else None
        block = TransformerBlock(cfg, layer, ModelRuntime(), kernels, ffn).to(dtype)
        block.attention.core = _flash_like
        cos, sin = rope_tables(cfg.rope_dim, max(seq, 1), cfg.rope)
        x = torch.empty(1, seq, cfg.dim, dtype=dtype, requires_grad=True)
    rotary = Rotary(cos, sin, None, seq)
    block.train()
    return _saved_bytes(block, lambda: block(x, rotary)) / seq


@functools.lru_cache(maxsize=16)
def norm_bytes_per_token(dim: int, dtype: torch.dtype, kernels: str = "fused") -> float:
    """Bytes one RMSNorm keeps per token (what sequence parallelism divides by ``tp``)."""
    with torch.device("meta"):
        norm = RMSNorm(dim, 1e-6).to(dtype)
        x = torch.empty(1, 8, dim, dtype=dtype, requires_grad=True)
    with _fused_kernels() if kernels == "fused" else ExitStack():
        return _saved_bytes(norm, lambda: norm(x)) / 8
