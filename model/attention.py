"""Causal self-attention over packed documents, with backends chosen per config.

Every backend computes the same thing: causal attention in which a query sees only keys of
its own document (packed sequences carry ``cu_seqlens``) and, on a local layer, only the last
``window`` positions, itself included; key/value heads are shared by groups of query heads.

- ``flash_attn``: flash-attn's varlen kernel (GPU, fp16/bf16), documents as one flat batch.
- ``triton``: kfm's own Triton flash attention (``model.kernels.flash_attention``): on a GPU, or
  on CPU under the Triton interpreter (``TRITON_INTERPRET=1``, for tests).
- ``flex``: PyTorch FlexAttention with a block mask built from the same rule.
- ``sdpa``: PyTorch scaled-dot-product attention; ``is_causal`` when there is nothing else to
  mask, else an explicit boolean mask (``attention_mask``), which is also the reference.
- ``auto``: by the features in use. One causal document per row and no window: SDPA (cuDNN/flash
  inside PyTorch; kfm's Triton kernel measured 3.4x slower than it on an H100,
  ``bench/results/kernels_h100.md``). Packed documents or a window: flash-attn's varlen kernel
  when installed and it can run the inputs (CUDA, half precision), else kfm's Triton kernel on
  CUDA, else SDPA with an explicit mask. The choice is logged once per distinct case.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model.kernels import require_triton, triton_available

log = logging.getLogger("kfm.model")


@dataclass
class Documents:
    """Where documents start in a (batch, seq) block of packed tokens."""

    doc_ids: torch.Tensor
    """(batch, seq) document index of each token within its row."""
    cu_seqlens: torch.Tensor
    """int32 cumulative lengths of every document, the rows laid end to end (flash-attn varlen)."""
    max_seqlen: int
    """Longest document."""

    @classmethod
    def from_cu_seqlens(cls, cu_seqlens: list[torch.Tensor], seq_len: int, device=None) -> Documents:
        """From one ``cu_seqlens`` per row (``[0, ..., seq_len]``, as the data loader gives them)."""
        rows, flat = [], [torch.zeros(1, dtype=torch.int64)]
        longest = 0
        for r, cu in enumerate(cu_seqlens):
            cu = cu.to("cpu", torch.int64)
            if cu[0] != 0 or cu[-1] != seq_len or bool((cu[1:] <= cu[:-1]).any()):
                raise ValueError(f"cu_seqlens of row {r} must rise strictly from 0 to the sequence length {seq_len}, "
                                 f"got {cu.tolist()}")
            lengths = cu[1:] - cu[:-1]
            rows.append(torch.repeat_interleave(torch.arange(len(lengths)), lengths))
            flat.append(cu[1:] + r * seq_len)
            longest = max(longest, int(lengths.max()))
        return cls(torch.stack(rows).to(device), torch.cat(flat).to(device, torch.int32), longest)


def attention_mask(seq_len: int, docs: Documents | None, window: int, device=None) -> torch.Tensor:
    """Boolean (batch or 1, 1, seq, seq) mask, True where query i may attend to key j."""
    i = torch.arange(seq_len, device=device)[:, None]
    j = torch.arange(seq_len, device=device)[None, :]
    allowed = j <= i
    if window:
        allowed = allowed & (i - j < window)
    allowed = allowed[None, None]
    if docs is not None:
        allowed = allowed & (docs.doc_ids[:, None, :, None] == docs.doc_ids[:, None, None, :])
    return allowed


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


@functools.cache
def _log_choice(choice: str, why: str) -> None:
    log.info("attention_backend=auto: %s (%s)", choice, why)


def resolve_backend(backend: str, q: torch.Tensor, docs: Documents | None = None, window: int = 0) -> str:
    """The backend that runs ``q``: ``auto`` resolved by the features in use, an explicit one checked with a
    clear error."""
    can_flash = q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
    if backend == "auto":
        if docs is None and not window:
            choice, why = "sdpa", "one causal document per row"
        elif can_flash and flash_attn_available():
            choice, why = "flash_attn", "packed documents or a window; flash-attn installed"
        elif q.is_cuda and triton_available():
            choice, why = "triton", "packed documents or a window; flash-attn not installed or not half precision"
        else:
            choice, why = "sdpa", f"packed documents or a window on {q.device.type}: explicit mask"
        _log_choice(choice, why)
        return choice
    if backend == "triton":
        require_triton("model.attention_backend=triton", q)
    if backend == "flash_attn":
        if not flash_attn_available():
            raise RuntimeError("model.attention_backend=flash_attn but flash-attn is not installed: "
                               "`pip install -e .[gpu]` on a CUDA machine, or use auto/sdpa")
        if not can_flash:
            raise RuntimeError(f"model.attention_backend=flash_attn needs CUDA fp16/bf16 tensors, got {q.dtype} on "
                               f"{q.device}: train in bf16 on a GPU, or use auto/sdpa")
    return backend


def _sdpa(q, k, v, docs: Documents | None, window: int) -> torch.Tensor:
    gqa = q.shape[1] != k.shape[1]
    if docs is None and not window:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    mask = attention_mask(q.shape[2], docs, window, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


@functools.cache
def _flex_attention(device_type: str):
    """``flex_attention``, compiled on a GPU: uncompiled it runs PyTorch's reference path (50x slower on an
    H100, ``bench/results/kernels_h100.md``); as is on CPU, where it serves the tests."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention) if device_type == "cuda" else flex_attention


def _flex(q, k, v, docs: Documents | None, window: int) -> torch.Tensor:
    from torch.nn.attention.flex_attention import create_block_mask

    doc_ids = docs.doc_ids if docs is not None else None

    def mask_mod(b, h, qi, kj):
        allowed = kj <= qi
        if window:
            allowed = allowed & (qi - kj < window)
        if doc_ids is not None:
            allowed = allowed & (doc_ids[b, qi] == doc_ids[b, kj])
        return allowed

    bsz, seq = q.shape[0], q.shape[2]
    block = create_block_mask(mask_mod, bsz if doc_ids is not None else None, None, seq, seq, device=q.device)
    return _flex_attention(q.device.type)(q, k, v, block_mask=block, enable_gqa=q.shape[1] != k.shape[1])


def _flash_attn(q, k, v, docs: Documents | None, window: int) -> torch.Tensor:
    from flash_attn import flash_attn_varlen_func

    bsz, heads, seq, dim = q.shape
    if docs is None:
        cu = torch.arange(0, (bsz + 1) * seq, seq, device=q.device, dtype=torch.int32)
        longest = seq
    else:
        cu, longest = docs.cu_seqlens, docs.max_seqlen

    def flat(x):  # (batch, heads, seq, dim) -> (batch * seq, heads, dim)
        return x.transpose(1, 2).reshape(bsz * seq, x.shape[1], dim)

    out = flash_attn_varlen_func(flat(q), flat(k), flat(v), cu, cu, longest, longest, causal=True,
                                 window_size=(window - 1, 0) if window else (-1, -1))
    return out.view(bsz, seq, heads, dim).transpose(1, 2)


def _triton(q, k, v, docs: Documents | None, window: int) -> torch.Tensor:
    from model.kernels.flash_attention import flash_attention

    return flash_attention(q, k, v, docs.doc_ids if docs is not None else None, window)


BACKENDS = {"sdpa": _sdpa, "flex": _flex, "flash_attn": _flash_attn, "triton": _triton}


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, docs: Documents | None = None, window: int = 0,
              backend: str = "auto") -> torch.Tensor:
    """Attention of q (batch, heads, seq, dim) over k, v (batch, kv_heads, seq, dim); same shape as q."""
    return BACKENDS[resolve_backend(backend, q, docs, window)](q, k, v, docs, window)
