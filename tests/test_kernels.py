"""Triton kernels against their PyTorch references.

Where a GPU exists the kernels run compiled on CUDA tensors (``DEVICE``); elsewhere on CPU tensors under Triton's
interpreter (``TRITON_INTERPRET=1``, set in conftest). The interpreter runs a different configuration from the
GPU: half-precision ``tl.dot`` operands are upcast to fp32 there (the interpreter multiplies bf16 operands
wrongly) and the attention kernel uses 16-wide blocks (``model.kernels.flash_attention._blocks``), so a pass
here on CPU says nothing about the GPU's block sizes or its half-precision products; ``make test`` on a GPU
node runs them.
"""

import pytest
import torch

from kfm.model.kernels.rms_norm import rms_norm
from kfm.model.layers import rms_norm_torch, swiglu_torch
from kfm.model.rope import Rotary
from tests.helpers import KERNEL_DEVICE as DEVICE

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("shape", [(5, 123, 123), (1, 1, 64), (3, 7, 80), (2, 33, 128), (4, 2, 1000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_matches_reference_forward_and_backward(shape, dtype, with_residual):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g).to(DEVICE, dtype).requires_grad_()
    w = (torch.rand(shape[-1], generator=g) + 0.5).to(DEVICE, dtype).requires_grad_()
    r = torch.randn(shape, generator=g).to(DEVICE, dtype).requires_grad_() if with_residual else None
    dy = torch.randn(shape, generator=g).to(DEVICE, dtype)
    dsum = torch.randn(shape, generator=g).to(DEVICE, dtype) if with_residual else None

    def run(fn):
        for t in (x, w, r):
            if t is not None:
                t.grad = None
        y, s = fn(x, w, 1e-6, r)
        loss = (y.float() * dy.float()).sum() + ((s.float() * dsum.float()).sum() if with_residual else 0.0)
        loss.backward()
        return [y, s, x.grad, w.grad] + ([r.grad] if with_residual else [])

    got, ref = run(rms_norm), run(rms_norm_torch)
    tol = TOL[dtype]
    for name, a, b in zip(["y", "x+residual", "dx", "dw", "dresidual"], got, ref):
        assert a.dtype == b.dtype, name
        scale = max(1.0, b.float().abs().max().item())  # dw sums over rows: compare relative to its size
        assert (a.float() - b.float()).abs().max().item() <= tol * scale, name


# (batch, heads, kv_heads, seq, head_dim, window, document layout (cu_seqlens per row) or None)
ATTENTION_CASES = [
    (1, 2, 2, 20, 64, 0, None),  # GQA 1, one block plus a ragged tail
    (2, 4, 1, 37, 80, 0, [[0, 10, 11, 37], [0, 37]]),  # GQA 4, head dim 80, a 1-token document
    (1, 8, 1, 50, 128, 0, [[0, 17, 33, 50]]),  # GQA 8, head dim 128, documents across block edges
    (1, 4, 2, 45, 64, 7, [[0, 30, 45]]),  # sliding window with documents
    (2, 2, 1, 33, 80, 16, None),  # window equal to the block size
]


@pytest.mark.parametrize("case", ATTENTION_CASES, ids=lambda c: f"b{c[0]}h{c[1]}kv{c[2]}s{c[3]}d{c[4]}w{c[5]}"
                         f"{'docs' if c[6] else ''}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_flash_attention_matches_reference_forward_and_backward(case, dtype):
    from kfm.model.attention import Documents, attention_mask
    from kfm.model.kernels.flash_attention import flash_attention
    from tests.helpers import reference_attention

    bsz, heads, kv_heads, seq, dim, window, layout = case
    g = torch.Generator().manual_seed(seq)
    q, k, v = (torch.randn(bsz, h, seq, dim, generator=g).to(DEVICE, dtype).requires_grad_()
               for h in (heads, kv_heads, kv_heads))
    dout = torch.randn(bsz, heads, seq, dim, generator=g).to(DEVICE, dtype)
    docs = Documents.from_cu_seqlens([torch.tensor(c) for c in layout], seq, DEVICE) if layout else None
    out = flash_attention(q, k, v, docs.doc_ids if docs else None, window)
    out.backward(dout)
    got = [out, q.grad, k.grad, v.grad]
    q.grad = k.grad = v.grad = None
    ref_out = reference_attention(q.float(), k.float(), v.float(), attention_mask(seq, docs, window, DEVICE))
    ref_out.backward(dout.float())
    tol = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}[dtype]
    for name, a, b in zip(["out", "dq", "dk", "dv"], got, [ref_out, q.grad, k.grad, v.grad]):
        assert a.dtype == dtype, name
        scale = max(1.0, b.abs().max().item())
        assert (a.float() - b.float()).abs().max().item() <= tol * scale, name


@pytest.mark.parametrize("shape", [(5, 123, 123), (3, 1000), (1, 7)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_swiglu_matches_reference_forward_and_backward(shape, dtype):
    from kfm.model.kernels.swiglu import swiglu

    g = torch.Generator().manual_seed(len(shape))
    a, b = (torch.randn(shape, generator=g).mul(3).to(DEVICE, dtype).requires_grad_() for _ in range(2))
    dy = torch.randn(shape, generator=g).to(DEVICE, dtype)
    got = swiglu(a, b)
    got.backward(dy)
    ga, gb = a.grad, b.grad
    a.grad = b.grad = None
    ref = swiglu_torch(a, b)
    ref.backward(dy)
    for name, x, y in [("y", got, ref), ("da", ga, a.grad), ("db", gb, b.grad)]:
        assert x.dtype == dtype
        assert (x.float() - y.float()).abs().max().item() <= TOL[dtype] * max(1.0, y.float().abs().max().item()), name


@pytest.mark.parametrize("heads, kv_heads, dim", [(4, 2, 64), (8, 1, 80), (3, 3, 128), (2, 2, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("packed", [False, True])
def test_rope_matches_reference_forward_and_backward(heads, kv_heads, dim, dtype, packed):
    from kfm.model.config import RopeConfig
    from kfm.model.kernels.rope import apply_rope_qk
    from kfm.model.rope import rope_tables

    bsz, seq = 2, 13
    cos, sin = (t.to(DEVICE) for t in rope_tables(dim, 64, RopeConfig(scaling="yarn", factor=4.0,
                                                                       original_max_seq_len=16)))
    g = torch.Generator().manual_seed(dim)
    q = torch.randn(bsz, seq, heads, dim, generator=g).to(DEVICE, dtype).requires_grad_()
    k = torch.randn(bsz, seq, kv_heads, dim, generator=g).to(DEVICE, dtype).requires_grad_()
    positions = (torch.tensor([list(range(5)) + list(range(8)), list(range(3, 16))]) if packed
                 else torch.arange(seq).expand(bsz, seq)).to(DEVICE)
    dq, dk = torch.randn(q.shape, generator=g).to(DEVICE, dtype), torch.randn(k.shape, generator=g).to(DEVICE, dtype)
    qo, ko = apply_rope_qk(q, k, cos, sin, positions if packed else None)
    (qo.float() * dq.float()).sum().add((ko.float() * dk.float()).sum()).backward()
    got = [qo, ko, q.grad, k.grad]
    q.grad = k.grad = None
    rotary = Rotary(cos, sin, positions, seq)  # the model's eager RoPE, on its (batch, heads, seq, dim) layout
    rq, rk = (rotary.apply(x.transpose(1, 2)).transpose(1, 2) for x in (q, k))
    (rq.float() * dq.float()).sum().add((rk.float() * dk.float()).sum()).backward()
    for name, x, y in zip(["q", "k", "dq", "dk"], got, [rq, rk, q.grad, k.grad]):
        assert x.dtype == dtype
        assert (x.float() - y.float()).abs().max().item() <= TOL[dtype] * max(1.0, y.float().abs().max().item()), name


@pytest.mark.parametrize("variant", ["llama", "exaone4_hybrid", "qwen3_qknorm_headdim"])
def test_model_with_triton_kernels_equals_plain_pytorch(variant):
    from kfm.model import ModelConfig, Transformer
    from kfm.model.config import ModelRuntime
    from tests.helpers import BASE, VARIANTS

    layouts = [[5, 11, 1, 7], [24]]
    tokens = torch.randint(0, BASE["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    cu = [torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()]) for lens in layouts]
    positions = torch.stack([torch.cat([torch.arange(n) for n in lens]) for lens in layouts]).to(DEVICE)
    results = []
    for kernels, backend in (("torch", "sdpa"), ("triton", "triton")):
        m = Transformer(ModelConfig(**{**BASE, **VARIANTS[variant]}), ModelRuntime(kernels, backend))
        m.init_weights(seed=0)
        m.to(DEVICE)
        loss = m(tokens, positions, cu, targets=torch.roll(tokens, -1, 1))
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in m.named_parameters()}))
    (plain, plain_grads), (fused, fused_grads) = results
    assert abs(plain.item() - fused.item()) < 1e-5
    for name, g in plain_grads.items():
        assert (g - fused_grads[name]).abs().max() < 1e-5, name


def test_kernel_benchmark_smoke_runs():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "bench" / "kernels.py"), "--smoke"], capture_output=True,
                         text=True, timeout=300, check=True).stdout
    rows = [line for line in out.splitlines() if line.startswith("| 8b")]
    assert {r.split("|")[2].strip() for r in rows} >= {"kfm triton", "torch eager", "torch sdpa (default)"}
    diffs = [float(r.split("|")[-2]) for r in rows]
    assert len(rows) == 10 and max(diffs) < 1e-4
