"""Time kfm's Triton kernels against the alternatives at production shapes (GPU), or smoke-test them (CPU).

    python bench/kernels.py                    # on a GPU: 8B- and 32B-layer shapes, seq 4096 and 8192, bf16
    python bench/kernels.py --smoke            # anywhere: tiny shapes, Triton interpreter on CPU, checks only

For each kernel, forward+backward milliseconds (``triton.testing.do_bench``, median) and the
throughput that matters for it: TFLOP/s for attention (causal: 2 * 2 * b * h * s^2 * d / 2 forward,
2.5x that backward) and GB/s of memory moved for the elementwise kernels. Competitors, each only
where installed: flash-attn (varlen), PyTorch SDPA (flash and cuDNN backends), FlexAttention
(compiled), Liger-Kernel, and ``torch.compile`` of the plain reference. Every competitor's output
is checked against kfm's before timing. Results print as a Markdown table.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {  # name: (dim, heads, kv_heads, head_dim, ffn)
    "8b": (4096, 32, 8, 128, 14336),
    "32b": (5120, 40, 8, 128, 27648),
}


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def fwd_bwd(fn, inputs, grad):
    def run():
        for x in inputs:
            x.grad = None
        out = fn(*inputs)
        out = out[0] if isinstance(out, tuple) else out
        out.backward(grad)
    return run


def timed(run, smoke: bool) -> float | None:
    if smoke:
        run()
        return None
    import triton.testing

    return triton.testing.do_bench(run, warmup=5, rep=30, return_mode="median")


def _fmt(ms: float | None, work_per_ms: float, unit: str) -> tuple[str, str]:
    """(milliseconds, throughput) cells; ``-`` for a smoke run, which times nothing."""
    return ("-", "-") if ms is None else (f"{ms:.3f}", f"{work_per_ms / ms:.1f} {unit}")


def attention_rows(seq: int, dims, dtype, device, smoke: bool):
    import torch
    import torch.nn.functional as F

    from kfm.model.kernels.flash_attention import flash_attention

    _, heads, kv, hd, _ = dims
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(1, h, seq, hd, generator=g).to(device, dtype).requires_grad_() for h in (heads, kv, kv))
    grad = torch.randn(1, heads, seq, hd, generator=g).to(device, dtype)
    flops = 2 * 2 * heads * seq * seq * hd / 2 * 3.5  # causal forward + backward (2.5x)
    ref = flash_attention(q, k, v)
    impls = {"kfm triton": lambda q, k, v: flash_attention(q, k, v),
             "torch sdpa (default)": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                                    enable_gqa=True)}
    if device == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def sdpa(backend):
            def fn(q, k, v):
                with sdpa_kernel(backend):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            return fn

        impls["sdpa flash"] = sdpa(SDPBackend.FLASH_ATTENTION)
        impls["sdpa cudnn"] = sdpa(SDPBackend.CUDNN_ATTENTION)
        if have("flash_attn"):
            from flash_attn import flash_attn_func

            impls["flash-attn"] = lambda q, k, v: flash_attn_func(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True).transpose(1, 2)
    rows = []
    for name, fn in impls.items():
        try:
            out = fn(q, k, v)
            err = (out.float() - ref.float()).abs().max().item()
            ms = timed(fwd_bwd(fn, (q, k, v), grad), smoke)
        except Exception as e:  # noqa: BLE001 - a backend that cannot run this shape is reported, not fatal
            rows.append((f"attention s{seq}", name, "-", f"unavailable: {type(e).__name__}", "-"))
            continue
        rows.append((f"attention s{seq}", name, *_fmt(ms, flops / 1e9, "TFLOP/s"), f"{err:.1e}"))
    return rows


def elementwise_rows(tokens: int, dims, dtype, device, smoke: bool):
    import torch

    from kfm.model.config import RopeConfig
    from kfm.model.kernels.linear_cross_entropy import linear_cross_entropy, linear_cross_entropy_reference
    from kfm.model.kernels.rms_norm import rms_norm
    from kfm.model.kernels.rope import apply_rope_qk
    from kfm.model.kernels.swiglu import swiglu
    from kfm.model.layers import rms_norm_torch, swiglu_torch
    from kfm.model.rope import Rotary, rope_tables

    dim, heads, kv, hd, ffn = dims
    vocab = 128256 if device == "cuda" else 1000
    g = torch.Generator(device="cpu").manual_seed(0)
    x, r = (torch.randn(tokens, dim, generator=g).to(device, dtype).requires_grad_() for _ in range(2))
    w = torch.ones(dim, device=device, dtype=dtype, requires_grad=True)
    a, b = (torch.randn(tokens, ffn, generator=g).to(device, dtype).requires_grad_() for _ in range(2))
    size = torch.finfo(dtype).bits // 8
    cases = {
        "rmsnorm+residual": ((x, w, r), lambda x, w, r: rms_norm(x, w, 1e-5, r),
                             lambda x, w, r: rms_norm_torch(x, w, 1e-5, r), 8 * tokens * dim * size,
                             torch.randn(tokens, dim, generator=g).to(device, dtype)),
        "swiglu": ((a, b), swiglu, swiglu_torch, 6 * tokens * ffn * size,
                   torch.randn(tokens, ffn, generator=g).to(device, dtype)),
    }
    cos, sin = (t.to(device) for t in rope_tables(hd, tokens, RopeConfig(theta=5e5)))
    rq, rk = (torch.randn(1, tokens, h, hd, generator=g).to(device, dtype).requires_grad_() for h in (heads, kv))
    rotary = Rotary(cos, sin, torch.arange(tokens, device=device)[None], tokens)
    cases["rope q+k"] = ((rq, rk), lambda q, k: torch.cat([x.flatten() for x in apply_rope_qk(q, k, cos, sin)]),
                         lambda q, k: torch.cat([rotary.apply(x.transpose(1, 2)).transpose(1, 2).flatten() for x in (q, k)]),
                         4 * tokens * (heads + kv) * hd * size,
                         torch.randn(tokens * (heads + kv) * hd, generator=g).to(device, dtype))
    h = torch.randn(tokens, dim, generator=g).to(device, dtype).requires_grad_()
    out_w = (torch.randn(vocab, dim, generator=g) / dim**0.5).to(device, dtype).requires_grad_()
    targets = torch.randint(0, vocab, (tokens,), generator=g).to(device)
    cases[f"linear+CE v{vocab}"] = (
        (h, out_w), lambda h, w: linear_cross_entropy(h, w, targets, use_triton=True),
        lambda h, w: linear_cross_entropy_reference(h, w, targets), 2 * vocab * dim * size,
        torch.tensor(1.0, device=device))
    rows = []
    for kernel, (inputs, ours, reference, nbytes, grad) in cases.items():
        impls = {"kfm triton": ours, "torch eager": reference}
        if device == "cuda":
            impls["torch.compile"] = torch.compile(reference)
            if have("liger_kernel") and kernel == "swiglu":
                from liger_kernel.ops.swiglu import LigerSiLUMulFunction

                impls["liger"] = LigerSiLUMulFunction.apply
        expected = ours(*inputs)
        expected = expected[0] if isinstance(expected, tuple) else expected
        for name, fn in impls.items():
            out = fn(*inputs)
            out = out[0] if isinstance(out, tuple) else out
            err = (out.float() - expected.float()).abs().max().item()
            ms = timed(fwd_bwd(fn, inputs, grad), smoke)
            rows.append((f"{kernel} {tokens}x", name, *_fmt(ms, nbytes / 1e6, "GB/s"), f"{err:.1e}"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, checks only (CPU: Triton interpreter)")
    ap.add_argument("--models", nargs="*", default=list(SHAPES))
    ap.add_argument("--seqs", nargs="*", type=int, default=[4096, 8192])
    args = ap.parse_args()
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.smoke:
        sys.exit("no GPU: timings need CUDA; run with --smoke to check the kernels run (Triton interpreter)")
    if args.smoke and device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels launch
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    print("| shape | implementation | fwd+bwd ms | throughput | max abs diff vs kfm |")
    print("|---|---|---:|---:|---:|")
    for model in args.models:
        dims = SHAPES[model]
        if args.smoke:
            dims, seqs, tokens = (64, 4, 2, 16, 96), [40], 33
        else:
            seqs, tokens = args.seqs, 8192
        for seq in seqs:
            for row in attention_rows(seq, dims, dtype, device, args.smoke):
                print(f"| {model} {row[0]} | " + " | ".join(row[1:]) + " |")
        for row in elementwise_rows(tokens, dims, dtype, device, args.smoke):
            print(f"| {model} {row[0]} | " + " | ".join(row[1:]) + " |")
        if args.smoke:
            break


if __name__ == "__main__":
    main()
