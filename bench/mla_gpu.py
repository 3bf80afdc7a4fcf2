"""kfm's latent attention on a GPU, forward + backward, on each attention backend against SDPA over the decompressed
keys and values computed in float32 (the reference), at DeepSeek-V3's head shapes.

    python bench/mla_gpu.py [--out bench/results]        # on a CUDA machine: about a minute
    TRITON_INTERPRET=1 python bench/mla_gpu.py --tiny    # on CPU: checks the script runs (numbers meaningless)

Every case runs the layer (bf16 weights and inputs) with ``attention_backend`` = sdpa, flex (compiled), triton
(kfm's kernel, values padded to the q/k width) and flash_attn (when installed, padded the same way), one causal
document per row and packed documents; reports the maximum error of the output and of the input gradient relative
to the float32 reference, then the median ms of ``--iters`` forward + backward passes after a warm-up (compile
and autotune excluded). Results go to ``<out>/mla_gpu_<device>.md`` with the GPU, torch, Triton and driver
versions.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))
from bench.gpu_timing import gpu_main, time_ms  # noqa: E402
from bench.mla_layer import latent_layer  # noqa: E402

CASES = {  # name: (dim, heads, q rank, kv rank, rope dim, q/k head, v head, batch, seq)
    "deepseek_v3_layer": (7168, 128, 1536, 512, 64, 192, 128, 1, 4096),
    "v2lite_layer": (2048, 16, 0, 512, 64, 192, 128, 2, 8192),
}
TINY = {"tiny": (64, 4, 24, 32, 8, 24, 16, 2, 40)}
BACKENDS = ("sdpa", "flex", "triton", "flash_attn")


def run_case(name, shape, args, device, dtype) -> list[str]:
    import torch

    from kfm.model.attention import Documents
    from kfm.model.rope import Rotary, rope_tables

    dim, heads, q_rank, kv_rank, rope, qk, v, batch, seq = shape
    cfg, layer = latent_layer(dim, heads, q_rank, kv_rank, rope, qk, v, seq, std=dim ** -0.5)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, seq, dim, generator=g)
    dy = torch.randn(batch, seq, dim, generator=g)
    cos, sin = (t.to(device) for t in rope_tables(cfg.rope_dim, seq, cfg.rope))
    lengths = [seq // 3, seq // 5, seq - seq // 3 - seq // 5]  # packed documents, every row alike
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    positions = torch.cat([torch.arange(n) for n in lengths]).expand(batch, -1).to(device)
    flops = 3 * batch * 2 * seq * seq * heads * (qk + v)  # full score matrix, fwd + 2x bwd
    rows = []
    for docs_kind in ("one document", "packed"):
        docs = Documents.from_cu_seqlens([cu] * batch, seq, device) if docs_kind == "packed" else None
        rotary = Rotary(cos, sin, positions if docs is not None else None, seq)
        layer32 = layer.to(device, torch.float32)
        layer32.backend, layer32._attention = "sdpa", {}
        x32 = x.to(device).clone().requires_grad_()
        ref = layer32(x32, rotary, docs)
        ref.backward(dy.to(device))
        ref, ref_dx = ref.detach(), x32.grad
        lowp = layer.to(device, dtype)
        for backend in BACKENDS:
            lowp.backend, lowp._attention = backend, {}
            xb = x.to(device, dtype).clone().requires_grad_()
            dyb = dy.to(device, dtype)

            def step():
                xb.grad = None
                lowp(xb, rotary, docs).backward(dyb)

            try:
                out = lowp(xb, rotary, docs)
                out.backward(dyb)
            except Exception as err:  # noqa: BLE001 - report what did not run, keep measuring the rest
                rows.append(f"| {name}, {docs_kind} | {backend} | did not run: {type(err).__name__}: "
                            f"{str(err)[:90]} | | | |")
                continue
            err_out = ((out.float() - ref).abs().max() / ref.abs().max()).item()
            err_dx = ((xb.grad.float() - ref_dx).abs().max() / ref_dx.abs().max()).item()
            for _ in range(args.warmup):
                step()
            ms = time_ms(step, args.iters, device)
            rows.append(f"| {name}: dim {dim}, {heads} heads of {qk - rope}+{rope} (v {v}), {batch} x {seq}, "
                        f"{docs_kind} | {backend} | {ms:.2f} | {flops / ms / 1e9:.0f} | {err_out:.1e} | {err_dx:.1e} |")
        lowp.zero_grad(set_to_none=True)
    return rows


if __name__ == "__main__":
    gpu_main(__doc__, __file__, "Latent attention",
             ["case", "backend", "ms (fwd+bwd)", "attention TFLOP/s", "out rel. error", "dx rel. error"], CASES, TINY,
             run_case, iters=10, warmup=2,
             note=lambda args: "; errors relative to the largest value of the float32 SDPA reference (output, input "
                               "gradient); TFLOP/s counts the full score matrix (fwd + 2x bwd)")
