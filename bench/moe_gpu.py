"""The MoE grouped GEMM and the whole MoE block on a GPU: kfm's Triton kernels against ``torch._grouped_mm`` and a
per-expert loop, forward + backward, bf16, at the expert shapes of the presets.

    python bench/moe_gpu.py [--out bench/results]        # on a CUDA machine: a few minutes
    TRITON_INTERPRET=1 python bench/moe_gpu.py --tiny    # on CPU: checks the script runs (numbers meaningless)

Each case draws tokens routed by a random router (``--skew`` > 0 makes the load uneven, as early training does),
checks every implementation's output and gradients against the per-expert loop (relative error), then times
``--iters`` forward + backward passes with CUDA events after a warm-up (compile and autotune excluded): the median
ms and TFLOP/s (3 x 2 x tokens x top_k x dim x expert hidden x 3 matrices). Results go to
``<out>/moe_gpu_<device>.md`` with the GPU name, torch, Triton and driver versions.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))
from bench.gpu_timing import gpu_main, time_ms  # noqa: E402

CASES = {  # name: (tokens, dim, experts, top_k, expert hidden)
    "qwen3_30b_a3b": (8192, 2048, 128, 8, 768),
    "k_exaone_236b_like": (4096, 6144, 128, 8, 2048),
    "solar_open_100b_like": (8192, 4096, 128, 8, 1280),
    "debug_moe": (8192, 128, 8, 2, 96),
}
TINY = {"tiny": (64, 64, 4, 2, 32)}


def run_case(name, shape, args, device, dtype) -> list[str]:
    import torch

    from kfm.model.config import ModelConfig, ModelRuntime, MoEConfig
    from kfm.model.kernels.grouped_gemm import grouped_mm
    from kfm.model.layers import KernelChoice
    from kfm.model.moe import MoE, expert_mm_grouped, expert_mm_loop

    tokens, dim, experts, top_k, hidden = shape
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(tokens, experts, generator=g) + args.skew * torch.linspace(1, 0, experts)
    choice = logits.topk(top_k, dim=-1).indices.reshape(-1)
    counts = torch.bincount(choice, minlength=experts).to(device)
    x = (torch.randn(tokens * top_k, dim, generator=g) * 0.5).to(device, dtype).requires_grad_()
    w = (torch.randn(experts, 2 * hidden, dim, generator=g) * dim ** -0.5).to(device, dtype).requires_grad_()
    dy = torch.randn(tokens * top_k, 2 * hidden, generator=g).to(device, dtype)
    flops = 3 * 2 * tokens * top_k * dim * 2 * hidden
    rows, reference = [], None
    impls = {"loop": expert_mm_loop, "grouped_mm": expert_mm_grouped, "triton": grouped_mm}
    for impl, mm in impls.items():
        def step():
            x.grad = w.grad = None
            mm(x, w, counts).backward(dy)

        try:
            step()
        except Exception as err:  # noqa: BLE001 - report what did not run, keep measuring the rest
            rows.append(f"| {name} gemm | {impl} | did not run: {type(err).__name__}: {str(err)[:80]} | | |")
            continue
        out = (mm(x, w, counts).detach().float(), x.grad.float(), w.grad.float())
        if reference is None:
            reference = out
        err = max(((a - b).abs().max() / b.abs().max().clamp(min=1e-6)).item() for a, b in zip(out, reference))
        for _ in range(args.warmup):
            step()
        ms = time_ms(step, args.iters, device)
        rows.append(f"| {name} gemm: {tokens} tokens x top-{top_k}, {experts} experts, {dim} -> 2x{hidden} | {impl} | "
                    f"{ms:.3f} | {flops / ms / 1e9:.1f} | {err:.1e} |")
    cfg = ModelConfig(dim=dim, n_layers=1, n_heads=4, n_kv_heads=2, ffn_hidden_dim=4 * dim, qk_norm=True,
                      moe=MoEConfig(n_experts=experts, top_k=top_k, expert_hidden_dim=hidden, n_shared_experts=1,
                                    score_func="sigmoid", norm_topk_prob=True, expert_bias=True))
    xb = (torch.randn(tokens, dim, generator=g) * 0.5).to(device, dtype)
    for impl, kernels in (("loop", "torch"), ("grouped_mm", "torch"), ("triton", "triton")):
        torch.manual_seed(0)
        layer = MoE(cfg, ModelRuntime(kernels=kernels, expert_gemm=impl), KernelChoice(kernels)).to(device, dtype)
        for p in layer.parameters():
            torch.nn.init.normal_(p, std=dim ** -0.5)

        def block():
            layer(xb.requires_grad_()).sum().backward()

        try:
            block()
        except Exception as err:  # noqa: BLE001
            rows.append(f"| {name} block | {impl} | did not run: {type(err).__name__}: {str(err)[:80]} | | |")
            continue
        for _ in range(args.warmup):
            block()
        ms = time_ms(block, args.iters, device)
        rows.append(f"| {name} block (router, dispatch, experts, shared expert): {tokens} tokens | {impl} "
                    f"(kernels={kernels}) | {ms:.3f} | | |")
    return rows


if __name__ == "__main__":
    gpu_main(__doc__, __file__, "MoE grouped GEMM and block",
             ["case", "implementation", "ms (fwd+bwd)", "TFLOP/s", "max rel. error vs loop"], CASES, TINY, run_case,
             options=(("--skew", dict(type=float, default=0.0)),), note=lambda args: f"; router skew {args.skew}")
