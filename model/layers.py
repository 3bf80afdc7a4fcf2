"""Building blocks: RMSNorm, grouped-query attention with options, SwiGLU, the transformer block.

Each follows the model's runtime (``kfm.model.config.ModelRuntime``): the Triton kernels of ``kfm.model.kernels``
or the plain PyTorch here, as one ``KernelChoice`` shared by the whole model decides. The plain code is the kernels' one reference (``rms_norm_torch``, ``swiglu_torch``; RoPE's is
``kfm.model.rope.Rotary.apply``): ``tests/test_kernels.py`` compares each kernel with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kfm.model.attention import Documents, attention_impl
from kfm.model.config import Kernels, ModelConfig, ModelRuntime
from kfm.model.kernels import require_triton, triton_available
from kfm.model.latent_attention import LatentAttention
from kfm.model.rope import Rotary


def use_triton(setting: str, x: torch.Tensor) -> bool:
    """Whether ``model_runtime.kernels`` = ``setting`` runs the Triton kernels on ``x``: ``auto`` on CUDA tensors
    when Triton is installed; ``triton`` always, with a clear error when they cannot run."""
    if setting == Kernels.triton:
        require_triton("model_runtime.kernels=triton", x)
        return True
    return setting == Kernels.auto and x.is_cuda and triton_available()


class KernelChoice:
    """Whether the model's Triton kernels run, for all its layers at once: ``triton``/``torch`` as configured,
    ``auto`` decided on the first forward on each device type and kept (the layers do not ask again)."""

    def __init__(self, setting: Kernels = Kernels.torch) -> None:
        self.setting = Kernels(setting)
        self._by_device: dict[str, bool] = {}

    def __call__(self, x: torch.Tensor) -> bool:
        if type(x) is not torch.Tensor:  # a tensor subclass (a DTensor under tensor parallelism): plain PyTorch
            return False
        kind = x.device.type
        if kind not in self._by_device:
            self._by_device[kind] = use_triton(self.setting, x)
        return self._by_device[kind]


def rms_norm_torch(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(RMSNorm(x + residual), x + residual) in plain PyTorch; without a residual the second is ``x``.

    Normalised in fp32 and rounded to the input's dtype, then scaled by the weight (as Hugging Face's Llama
    does) and returned in the input's dtype. The Triton kernel rounds at the same two points."""
    if residual is not None:
        x = x + residual
    x32 = x.float()
    y = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return (weight * y).to(x.dtype), x


def swiglu_torch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """silu(a) * b in fp32, rounded once to ``a``'s dtype (as the Triton kernel does)."""
    return (F.silu(a.float()) * b.float()).to(a.dtype)


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight (``rms_norm_torch``, or the Triton kernel)."""

    def __init__(self, dim: int, eps: float, kernels: KernelChoice | None = None) -> None:
        super().__init__()
        self.eps, self.kernels = eps, kernels or KernelChoice()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernels(x):
            from kfm.model.kernels.rms_norm import rms_norm

            return rms_norm(x, self.weight, self.eps)[0]
        return rms_norm_torch(x, self.weight, self.eps)[0]

    def add_and_norm(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x + residual), x + residual), in one kernel with Triton."""
        if self.kernels(x):
            from kfm.model.kernels.rms_norm import rms_norm

            return rms_norm(x, self.weight, self.eps, residual)
        return rms_norm_torch(x, self.weight, self.eps, residual)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


class Attention(nn.Module):
    """Causal grouped-query self-attention: optional QKV bias, QK-norm, RoPE, sliding window."""

    def __init__(self, cfg: ModelConfig, layer: int, runtime: ModelRuntime, kernels: KernelChoice) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_size
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * self.head_dim, bias=cfg.qkv_bias)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * self.head_dim, bias=cfg.qkv_bias)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * self.head_dim, bias=cfg.qkv_bias)
        self.wo = nn.Linear(cfg.n_heads * self.head_dim, cfg.dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim, cfg.norm_eps, kernels) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, cfg.norm_eps, kernels) if cfg.qk_norm else None
        self.kernels = kernels
        self.window = cfg.sliding_window if cfg.is_local(layer) else 0
        self.use_rope = cfg.uses_rope(layer)
        self.backend = runtime.attention_backend
        self._attention: dict[tuple, object] = {}
        """The attention implementation for each kind of input (device, dtype, documents or not), resolved on its
        first forward (``auto`` logs why) and kept."""
        self.core = None
        """A replacement of the attention core (``fn(q, k, v, docs, window, scale)``) set from outside: context
        parallelism attends over keys and values gathered from other ranks (``kfm.train.parallel``)."""

    def forward(self, x: torch.Tensor, rotary: Rotary, docs: Documents | None = None) -> torch.Tensor:
        bsz, seq, _ = x.shape
        # heads as the projections give them (-1): a tensor-parallel rank holds a whole part of them
        q = self.wq(x).view(bsz, seq, -1, self.head_dim)
        k = self.wk(x).view(bsz, seq, -1, self.head_dim)
        v = self.wv(x).view(bsz, seq, -1, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        triton_rope = self.use_rope and self.kernels(x)
        if triton_rope:
            from kfm.model.kernels.rope import apply_rope_qk

            q, k = apply_rope_qk(q, k, rotary.cos, rotary.sin, rotary.positions)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.use_rope and not triton_rope:
            q, k = rotary.apply(q), rotary.apply(k)
        kind = (q.device.type, q.dtype, docs is None)
        if kind not in self._attention:
            self._attention[kind] = self.core or attention_impl(self.backend, q, docs, self.window)
        out = self._attention[kind](q, k, v, docs, self.window)
        return self.wo(out.transpose(1, 2).reshape(bsz, seq, -1))

    def in_weights(self) -> list[torch.Tensor]:
        """The projections drawn with the init's std (``Transformer.init_weights``), in draw order."""
        return [self.wq.weight, self.wk.weight, self.wv.weight]

    def norms(self) -> list[nn.Module]:
        return [n for n in (self.q_norm, self.k_norm) if n is not None]


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden: int, kernels: KernelChoice) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.kernels = kernels

    def in_weights(self) -> list[torch.Tensor]:
        """The weights drawn with the init's std (``Transformer.init_weights``), in draw order."""
        return [self.w1.weight, self.w3.weight]

    def out_weights(self) -> list[torch.Tensor]:
        """The residual-output weights (drawn with the depth-scaled std)."""
        return [self.w2.weight]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernels(x):
            from kfm.model.kernels.swiglu import swiglu

            return self.w2(swiglu(self.w1(x), self.w3(x)))
        return self.w2(swiglu_torch(self.w1(x), self.w3(x)))


class TransformerBlock(nn.Module):
    """Residual block; ``feed_forward`` is a dense SwiGLU (default) or the mixture of experts ``kfm.model.moe.MoE``.
    Pre-norm: x + attn(norm(x)), then + ffn(norm(x)); post (EXAONE 4):
    x + norm(attn(x)), then + norm(ffn(x))."""

    def __init__(self, cfg: ModelConfig, layer: int, runtime: ModelRuntime, kernels: KernelChoice,
                 feed_forward: nn.Module | None = None) -> None:
        super().__init__()
        self.post_norm = cfg.norm_placement == "post"
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps, kernels)
        if cfg.mla.enabled:
            self.attention = LatentAttention(cfg, layer, runtime, RMSNorm, kernels)
        else:
            self.attention = Attention(cfg, layer, runtime, kernels)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps, kernels)
        self.feed_forward = FeedForward(cfg.dim, cfg.ffn_hidden_dim, kernels) if feed_forward is None else feed_forward

    def forward(self, x: torch.Tensor, rotary: Rotary, docs: Documents | None = None) -> torch.Tensor:
        if self.post_norm:
            x = x + self.attention_norm(self.attention(x, rotary, docs))
            return x + self.ffn_norm(self.feed_forward(x))
        h, x = self.ffn_norm.add_and_norm(self.attention(self.attention_norm(x), rotary, docs), x)
        return x + self.feed_forward(h)
