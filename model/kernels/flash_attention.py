"""Flash attention (forward and backward) in Triton: causal, grouped-query, packed documents, sliding window.

For query i and key j of the same row, attention is allowed when ``j <= i``, both tokens are in
the same document (``doc_ids``) and, with a window W, ``i - j < W``. With s = q k^T / sqrt(d):

    out_i = sum_j softmax_j(s_ij) v_j,            lse_i = log sum_j exp(s_ij)
    backward (FlashAttention-2):  p_ij = exp(s_ij - lse_i),   delta_i = sum_d dout_id * out_id
        dv_j = sum_i p_ij dout_i,   dp_ij = dout_i . v_j,   ds_ij = p_ij (dp_ij - delta_i)
        dq_i = scale * sum_j ds_ij k_j,   dk_j = scale * sum_i ds_ij q_i

The forward visits, for each block of queries, only the key blocks from the first one any of
its queries may see (document start, window) to the diagonal, keeping a running max and sum
(online softmax), so memory is linear in the sequence length. The backward runs one kernel
over key blocks (dk, dv: all query heads of a key/value head, no atomics) and one over query
blocks (dq). Layers: kernels → ``_forward``/``_backward`` launchers → ``FlashAttentionFunction``
→ ``flash_attention``; the reference is ``model.attention.attention_mask`` + plain softmax
attention (tests/test_kernels.py). Accumulation is fp32. Under the Triton interpreter (CPU
tests) half-precision ``tl.dot`` operands are upcast to fp32, since the interpreter multiplies
bf16 operands wrongly.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kfm.model.kernels import interpreting


@triton.jit
def _allowed(offs_m, offs_n, doc_q, doc_k, seq_len, WINDOW: tl.constexpr):
    ok = (offs_n[None, :] <= offs_m[:, None]) & (offs_n[None, :] < seq_len) & (doc_q[:, None] == doc_k[None, :])
    if WINDOW > 0:
        ok = ok & (offs_m[:, None] - offs_n[None, :] < WINDOW)
    return ok


@triton.jit
def _load_block(base, offs, stride, offs_d, rows_ok, d_ok, UPCAST: tl.constexpr):
    """Rows ``offs`` (head_dim wide) of one head's (seq, head_dim) tensor; zeros outside; fp32 if UPCAST."""
    x = tl.load(base + offs[:, None] * stride + offs_d[None, :], mask=rows_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _key_range(DOC_START, b, seq_len, first, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WINDOW: tl.constexpr):
    """Key blocks a query block starting at ``first`` may see: from its document start (or window) to the diagonal."""
    lo = tl.load(DOC_START + b * seq_len + first)
    if WINDOW > 0:
        lo = tl.maximum(lo, first - WINDOW + 1)
    return (lo // BLOCK_N) * BLOCK_N, tl.minimum(first + BLOCK_M, seq_len)


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, DOC, DOC_START, scale, seq_len, n_heads, n_kv_heads,
                stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                WINDOW: tl.constexpr, UPCAST: tl.constexpr):
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // n_heads, bh % n_heads
    kvh = h // (n_heads // n_kv_heads)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < seq_len
    d_ok = offs_d < HEAD_DIM
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :],
                mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    doc_q = tl.load(DOC + b * seq_len + offs_m, mask=m_ok, other=-1)
    lo, hi = _key_range(DOC_START, b, seq_len, pid_m * BLOCK_M, BLOCK_M, BLOCK_N, WINDOW)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    k_base = K + b * stride_kb + kvh * stride_kh
    v_base = V + b * stride_kb + kvh * stride_kh
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < seq_len
        k = _load_block(k_base, offs_n, stride_ks, offs_d, n_ok, d_ok, UPCAST)
        v = _load_block(v_base, offs_n, stride_ks, offs_d, n_ok, d_ok, UPCAST)
        doc_k = tl.load(DOC + b * seq_len + offs_n, mask=n_ok, other=-2)
        s = tl.dot(q, tl.trans(k)) * scale
        s = tl.where(_allowed(offs_m, offs_n, doc_q, doc_k, seq_len, WINDOW), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing allowed yet
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    l_i = tl.where(l_i == 0.0, 1.0, l_i)  # padding rows past the sequence end
    out = acc / l_i[:, None]
    tl.store(O + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
    tl.store(LSE + bh * seq_len + offs_m, m_i + tl.log(l_i), mask=m_ok)


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DOC, DOC_END, DK, DV, scale, seq_len, n_heads, n_kv_heads,
                     stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks,
                     HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     WINDOW: tl.constexpr, UPCAST: tl.constexpr):
    pid_n, bkv = tl.program_id(0), tl.program_id(1)
    b, kvh = bkv // n_kv_heads, bkv % n_kv_heads
    group = n_heads // n_kv_heads
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < seq_len
    d_ok = offs_d < HEAD_DIM
    kv_off = b * stride_kb + kvh * stride_kh + offs_n[:, None] * stride_ks + offs_d[None, :]
    k = tl.load(K + kv_off, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    v = tl.load(V + kv_off, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        k, v = k.to(tl.float32), v.to(tl.float32)
    doc_k = tl.load(DOC + b * seq_len + offs_n, mask=n_ok, other=-2)
    first = pid_n * BLOCK_N
    last = tl.minimum(first + BLOCK_N, seq_len) - 1
    lo = (first // BLOCK_M) * BLOCK_M
    hi = tl.load(DOC_END + b * seq_len + last)  # queries past the last key's document see none of these keys
    if WINDOW > 0:
        hi = tl.minimum(hi, last + WINDOW)
    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for g in range(group):
        h = kvh * group + g
        q_base = Q + b * stride_qb + h * stride_qh
        do_base = DO + b * stride_qb + h * stride_qh
        for start_m in range(lo, hi, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            m_ok = offs_m < seq_len
            q = _load_block(q_base, offs_m, stride_qs, offs_d, m_ok, d_ok, UPCAST)
            do = _load_block(do_base, offs_m, stride_qs, offs_d, m_ok, d_ok, UPCAST)
            doc_q = tl.load(DOC + b * seq_len + offs_m, mask=m_ok, other=-1)
            lse = tl.load(LSE + (b * n_heads + h) * seq_len + offs_m, mask=m_ok, other=0.0)
            delta = tl.load(DELTA + (b * n_heads + h) * seq_len + offs_m, mask=m_ok, other=0.0)
            s = tl.dot(q, tl.trans(k)) * scale
            ok = _allowed(offs_m, offs_n, doc_q, doc_k, seq_len, WINDOW) & m_ok[:, None]
            p = tl.where(ok, tl.exp(s - lse[:, None]), 0.0)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do)
            dp = tl.dot(do, tl.trans(v))
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q)
    tl.store(DK + kv_off, (dk * scale).to(DK.dtype.element_ty), mask=n_ok[:, None] & d_ok[None, :])
    tl.store(DV + kv_off, dv.to(DV.dtype.element_ty), mask=n_ok[:, None] & d_ok[None, :])


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DOC, DOC_START, DQ, scale, seq_len, n_heads, n_kv_heads,
                   stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   WINDOW: tl.constexpr, UPCAST: tl.constexpr):
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // n_heads, bh % n_heads
    kvh = h // (n_heads // n_kv_heads)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < seq_len
    d_ok = offs_d < HEAD_DIM
    q_off = b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :]
    q = tl.load(Q + q_off, mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    do = tl.load(DO + q_off, mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        q, do = q.to(tl.float32), do.to(tl.float32)
    doc_q = tl.load(DOC + b * seq_len + offs_m, mask=m_ok, other=-1)
    lse = tl.load(LSE + bh * seq_len + offs_m, mask=m_ok, other=0.0)
    delta = tl.load(DELTA + bh * seq_len + offs_m, mask=m_ok, other=0.0)
    lo, hi = _key_range(DOC_START, b, seq_len, pid_m * BLOCK_M, BLOCK_M, BLOCK_N, WINDOW)
    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    k_base = K + b * stride_kb + kvh * stride_kh
    v_base = V + b * stride_kb + kvh * stride_kh
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < seq_len
        k = _load_block(k_base, offs_n, stride_ks, offs_d, n_ok, d_ok, UPCAST)
        v = _load_block(v_base, offs_n, stride_ks, offs_d, n_ok, d_ok, UPCAST)
        doc_k = tl.load(DOC + b * seq_len + offs_n, mask=n_ok, other=-2)
        s = tl.dot(q, tl.trans(k)) * scale
        ok = _allowed(offs_m, offs_n, doc_q, doc_k, seq_len, WINDOW) & m_ok[:, None]
        p = tl.where(ok, tl.exp(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k)
    tl.store(DQ + q_off, (dq * scale).to(DQ.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])


def document_bounds(doc_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token: the index where its document starts, and one past where it ends (int32, (batch, seq))."""
    bsz, seq = doc_ids.shape
    pos = torch.arange(seq, device=doc_ids.device).expand(bsz, seq)
    new = torch.ones_like(doc_ids, dtype=torch.bool)
    new[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    start = torch.cummax(torch.where(new, pos, 0), dim=1).values
    ends = torch.ones_like(new)
    ends[:, :-1] = new[:, 1:]
    end = torch.flip(torch.cummin(torch.flip(torch.where(ends, pos + 1, seq), [1]), dim=1).values, [1])
    return start.to(torch.int32).contiguous(), end.to(torch.int32).contiguous()


def _blocks(head_dim: int) -> dict:
    small = interpreting()
    return dict(BLOCK_D=max(16, triton.next_power_of_2(head_dim)), BLOCK_M=16 if small else 64,
                BLOCK_N=16 if small else 64)


def _strides(q: torch.Tensor, k: torch.Tensor) -> tuple:
    return q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2)


def _forward(q, k, v, doc_ids, start, window: int, scale: float):
    bsz, heads, seq, dim = q.shape
    out = torch.empty_like(q)
    lse = torch.empty(bsz, heads, seq, dtype=torch.float32, device=q.device)
    blocks = _blocks(dim)
    grid = (triton.cdiv(seq, blocks["BLOCK_M"]), bsz * heads)
    _fwd_kernel[grid](q, k, v, out, lse, doc_ids, start, scale, seq, heads, k.shape[1],
                      *_strides(q, k), HEAD_DIM=dim, WINDOW=window, UPCAST=interpreting(), **blocks)
    return out, lse


def _backward(q, k, v, out, lse, dout, doc_ids, start, end, window: int, scale: float):
    bsz, heads, seq, dim = q.shape
    dout = dout.contiguous()
    delta = (dout.float() * out.float()).sum(-1).contiguous()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    blocks = _blocks(dim)
    common = dict(HEAD_DIM=dim, WINDOW=window, UPCAST=interpreting(), **blocks)
    _bwd_dkdv_kernel[(triton.cdiv(seq, blocks["BLOCK_N"]), bsz * k.shape[1])](
        q, k, v, dout, lse, delta, doc_ids, end, dk, dv, scale, seq, heads, k.shape[1], *_strides(q, k), **common)
    _bwd_dq_kernel[(triton.cdiv(seq, blocks["BLOCK_M"]), bsz * heads)](
        q, k, v, dout, lse, delta, doc_ids, start, dq, scale, seq, heads, k.shape[1], *_strides(q, k), **common)
    return dq, dk, dv


class FlashAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, doc_ids, start, end, window: int, scale: float):
        out, lse = _forward(q, k, v, doc_ids, start, window, scale)
        ctx.save_for_backward(q, k, v, out, lse, doc_ids, start, end)
        ctx.window, ctx.scale = window, scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, doc_ids, start, end = ctx.saved_tensors
        dq, dk, dv = _backward(q, k, v, out, lse, dout, doc_ids, start, end, ctx.window, ctx.scale)
        return dq, dk, dv, None, None, None, None, None


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, doc_ids: torch.Tensor | None = None,
                    window: int = 0, bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
                    scale: float | None = None) -> torch.Tensor:
    """Attention of q (batch, heads, seq, dim) over k, v (batch, kv_heads, seq, dim) with the Triton kernels;
    ``doc_ids`` (batch, seq) keeps attention within documents, ``window`` > 0 limits it to the last ``window``.
    ``bounds``: ``document_bounds(doc_ids)`` when the caller has it already (the model computes it once per
    batch, ``kfm.model.attention.Documents.bounds``), else computed here. ``scale``: of q k^T (default
    ``1/sqrt(dim)``). Values as wide as q and k (a caller with narrower ones pads them)."""
    if v.shape[-1] != q.shape[-1]:
        raise ValueError(f"value heads ({v.shape[-1]} wide) must be as wide as q/k heads ({q.shape[-1]}): pad them")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")
    if doc_ids is None:
        doc_ids = torch.zeros(q.shape[0], q.shape[2], dtype=torch.int32, device=q.device)
    doc_ids = doc_ids.to(torch.int32).contiguous()
    start, end = bounds if bounds is not None else document_bounds(doc_ids)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return FlashAttentionFunction.apply(q, k, v, doc_ids, start, end, int(window), scale)
