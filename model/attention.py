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

import torch
import torch.nn.functional as F

from kfm.model.kernels import require_triton, triton_available

log = logging.getLogger("kfm.model")


class Documents:
    """Where documents start in a (batch, seq) block of packed tokens, computed once per batch and shared by
    every layer: the document ids, the bounds the Triton kernel reads, and the masks of each window
    (dense for SDPA, a block mask for FlexAttention) are built on first use and cached here."""

    def __init__(self, cu_seqlens: torch.Tensor, batch: int, seq_len: int, device=None) -> None:
        """``cu_seqlens``: int cumulative lengths of every document, the rows laid end to end (``[0, ...,
        batch * seq_len]``, each row's end among them), as the data loader gives them and flash-attn reads them.
        Checked here when it is on the CPU (as the loader gives it), which costs no device synchronisation."""
        if cu_seqlens.device.type == "cpu":
            _check_flat(cu_seqlens, batch, seq_len)
        self.batch, self.seq_len = batch, seq_len
        self.cu_seqlens = cu_seqlens.to(device, torch.int32)
        lengths = (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).long()
        doc = torch.repeat_interleave(torch.arange(len(lengths), device=self.cu_seqlens.device), lengths,
                                      output_size=batch * seq_len)
        self.doc_ids = doc.view(batch, seq_len)
        """(batch, seq) document index of each token (unique over the batch, so equal only within a row)."""
        self._lengths = lengths
        self._cache: dict = {}

    @classmethod
    def from_cu_seqlens(cls, cu_seqlens: list[torch.Tensor], seq_len: int, device=None) -> Documents:
        """From one ``cu_seqlens`` per row (``[0, ..., seq_len]``)."""
        for r, cu in enumerate(cu_seqlens):
            cu = cu.to("cpu", torch.int64)
            if cu[0] != 0 or cu[-1] != seq_len or bool((cu[1:] <= cu[:-1]).any()):
                raise ValueError(f"cu_seqlens of row {r} must rise strictly from 0 to the sequence length {seq_len}, "
                                 f"got {cu.tolist()}")
        return cls(flat_cu_seqlens(cu_seqlens, seq_len), len(cu_seqlens), seq_len, device)

    @property
    def max_seqlen(self) -> int:
        """Longest document (a host synchronisation the first time: only flash-attn asks)."""
        if "max_seqlen" not in self._cache:
            self._cache["max_seqlen"] = int(self._lengths.max())
        return self._cache["max_seqlen"]

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """int32 (batch, seq) first position of each token's document and one past its last (row offsets)."""
        if "bounds" not in self._cache:
            row_start = (torch.arange(self.batch, device=self.doc_ids.device) * self.seq_len)[:, None]
            start = self.cu_seqlens[:-1].long()[self.doc_ids] - row_start
            end = self.cu_seqlens[1:].long()[self.doc_ids] - row_start
            self._cache["bounds"] = (start.to(torch.int32).contiguous(), end.to(torch.int32).contiguous())
        return self._cache["bounds"]

    def cached(self, key, build):
        """``build()`` once per batch for ``key`` (a mask of one window, say), then the same object."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]


def flat_cu_seqlens(cu_seqlens: list[torch.Tensor], seq_len: int) -> torch.Tensor:
    """Per-row ``cu_seqlens`` laid end to end: ``[0, ..., batch * seq_len]`` (int32)."""
    parts = [torch.zeros(1, dtype=torch.int64)]
    parts += [cu.to("cpu", torch.int64)[1:] + r * seq_len for r, cu in enumerate(cu_seqlens)]
    return torch.cat(parts).to(torch.int32)


def _check_flat(cu: torch.Tensor, batch: int, seq_len: int) -> None:
    cu = cu.long()
    rows_end = torch.arange(1, batch + 1) * seq_len
    if (cu.ndim != 1 or len(cu) < 2 or cu[0] != 0 or cu[-1] != batch * seq_len or bool((cu[1:] <= cu[:-1]).any())
            or not bool(torch.isin(rows_end, cu).all())):
        raise ValueError(f"cu_seqlens must rise strictly from 0 to batch x sequence length ({batch} x {seq_len}) and "
                         f"hold every row's end, got {cu.tolist()[:16]}{' ...' if len(cu) > 16 else ''}")


def documents_from_positions(position_ids: torch.Tensor) -> Documents:
    """The ``Documents`` of a packed batch from its positions alone (a document starts where its position is 0, and
    every row starts one), as the loader numbers them: for code that passes only tensors split along the batch
    (pipeline micro batches). Reading the boundaries' count synchronises with the device once."""
    batch, seq = position_ids.shape
    starts = position_ids == 0
    starts[:, 0] = True
    flat = starts.reshape(-1).nonzero().squeeze(1)
    cu = torch.cat([flat, flat.new_full((1,), batch * seq)]).to(torch.int32)
    return Documents(cu, batch, seq, position_ids.device)


def as_documents(cu_seqlens, batch: int, seq_len: int, device=None) -> Documents | None:
    """``Documents`` from what a caller passes the model: per-row ``cu_seqlens`` (a list), the flat ones (a 1-D
    tensor, as the loader gives them), a ``Documents`` already built, or ``None`` (one document per row)."""
    if cu_seqlens is None or isinstance(cu_seqlens, Documents):
        return cu_seqlens
    if isinstance(cu_seqlens, torch.Tensor):
        return Documents(cu_seqlens, batch, seq_len, device)
    if len(cu_seqlens) != batch:
        raise ValueError(f"cu_seqlens has {len(cu_seqlens)} rows for a batch of {batch}")
    return Documents.from_cu_seqlens(cu_seqlens, seq_len, device)


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
        require_triton("model_runtime.attention_backend=triton", q)
    if backend == "flash_attn":
        if not flash_attn_available():
            raise RuntimeError("model_runtime.attention_backend=flash_attn but flash-attn is not installed: "
                               "`pip install -e .[gpu]` on a CUDA machine, or use auto/sdpa")
        if not can_flash:
            raise RuntimeError(f"model_runtime.attention_backend=flash_attn needs CUDA fp16/bf16 tensors, got {q.dtype} on "
                               f"{q.device}: train in bf16 on a GPU, or use auto/sdpa")
    return backend


def _sdpa(q, k, v, docs: Documents | None, window: int, scale: float | None = None) -> torch.Tensor:
    gqa = q.shape[1] != k.shape[1]
    if docs is None and not window:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa, scale=scale)
    seq = q.shape[2]
    if docs is None:
        mask = _causal_window_mask(seq, window, q.device)
    else:
        mask = docs.cached(("dense", window), lambda: attention_mask(seq, docs, window, q.device))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa, scale=scale)


@functools.lru_cache(maxsize=16)
def _causal_window_mask(seq: int, window: int, device) -> torch.Tensor:
    return attention_mask(seq, None, window, device)


@functools.cache
def _flex_attention(device_type: str):
    """``flex_attention``, compiled on a GPU: uncompiled it runs PyTorch's reference path (50x slower on an
    H100, ``bench/results/kernels_h100.md``); as is on CPU, where it serves the tests."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention) if device_type == "cuda" else flex_attention


def _block_mask(doc_ids: torch.Tensor | None, bsz: int, seq: int, window: int, device):
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, qi, kj):
        allowed = kj <= qi
        if window:
            allowed = allowed & (qi - kj < window)
        if doc_ids is not None:
            allowed = allowed & (doc_ids[b, qi] == doc_ids[b, kj])
        return allowed

    return create_block_mask(mask_mod, bsz if doc_ids is not None else None, None, seq, seq, device=device)


@functools.lru_cache(maxsize=16)
def _causal_block_mask(seq: int, window: int, device):
    return _block_mask(None, 1, seq, window, device)


def _flex(q, k, v, docs: Documents | None, window: int, scale: float | None = None) -> torch.Tensor:
    """The block mask is built once per batch and window (once per shape and window without documents), not
    once per layer."""
    bsz, seq = q.shape[0], q.shape[2]
    if docs is None:
        block = _causal_block_mask(seq, window, q.device)
    else:
        block = docs.cached(("block", window), lambda: _block_mask(docs.doc_ids, bsz, seq, window, q.device))
    return _flex_attention(q.device.type)(q, k, v, block_mask=block, enable_gqa=q.shape[1] != k.shape[1],
                                          scale=scale)


def padded_values(fn):
    """``fn`` for value heads narrower than q/k (latent attention: 128 vs 192): the values padded with zeros to
    the q/k width, the output's extra columns (zero) cut off; the gradient of the padding is dropped by the slice.
    For kernels that take one head width (flash-attn 2, kfm's Triton kernel)."""

    @functools.wraps(fn)
    def run(q, k, v, docs, window, scale=None):
        width = v.shape[-1]
        if width == q.shape[-1]:
            return fn(q, k, v, docs, window, scale)
        return fn(q, k, F.pad(v, (0, q.shape[-1] - width)), docs, window, scale)[..., :width]

    return run


@padded_values
def _flash_attn(q, k, v, docs: Documents | None, window: int, scale: float | None = None) -> torch.Tensor:
    from flash_attn import flash_attn_varlen_func

    bsz, heads, seq, dim = q.shape
    if dim > 256:
        raise ValueError(f"flash-attn runs head widths up to 256, got {dim}: use model_runtime.attention_backend="
                         "triton, flex or sdpa")
    if docs is None:
        cu = torch.arange(0, (bsz + 1) * seq, seq, device=q.device, dtype=torch.int32)
        longest = seq
    else:
        cu, longest = docs.cu_seqlens, docs.max_seqlen

    def flat(x):  # (batch, heads, seq, dim) -> (batch * seq, heads, dim)
        return x.transpose(1, 2).reshape(bsz * seq, x.shape[1], dim)

    out = flash_attn_varlen_func(flat(q), flat(k), flat(v), cu, cu, longest, longest, causal=True,
                                 window_size=(window - 1, 0) if window else (-1, -1), softmax_scale=scale)
    return out.view(bsz, seq, heads, dim).transpose(1, 2)


@padded_values
def _triton(q, k, v, docs: Documents | None, window: int, scale: float | None = None) -> torch.Tensor:
    from kfm.model.kernels.flash_attention import flash_attention

    if docs is None:
        return flash_attention(q, k, v, None, window, scale=scale)
    return flash_attention(q, k, v, docs.doc_ids, window, bounds=docs.bounds(), scale=scale)


BACKENDS = {"sdpa": _sdpa, "flex": _flex, "flash_attn": _flash_attn, "triton": _triton}


def attention_impl(backend: str, q: torch.Tensor, docs: Documents | None = None, window: int = 0):
    """The function that runs ``backend`` for inputs like ``q`` (``auto`` resolved), called as
    ``fn(q, k, v, docs, window, scale=None)`` (scale of q k^T, default ``1/sqrt(q's head width)``; values may be
    narrower than q and k); a layer resolves it once per kind of input and keeps it."""
    return BACKENDS[resolve_backend(backend, q, docs, window)]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, docs: Documents | None = None, window: int = 0,
              backend: str = "auto", scale: float | None = None) -> torch.Tensor:
    """Attention of q (batch, heads, seq, dim) over k (batch, kv_heads, seq, dim) and v (batch, kv_heads, seq,
    v_dim); (batch, heads, seq, v_dim)."""
    return attention_impl(backend, q, docs, window)(q, k, v, docs, window, scale)
