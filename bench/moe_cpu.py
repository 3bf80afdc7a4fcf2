"""kfm's MoE layer against transformers' Qwen3MoeSparseMoeBlock with the same config and weights, and the whole
debug MoE model against Qwen3MoeForCausalLM, on CPU: forward + backward tokens/s and peak memory.

    python bench/moe_cpu.py [--cases block16 block64 model] [--rounds 3]

Each measurement runs in a fresh process (peak RSS belongs to one implementation); rounds alternate the
implementations; the report gives medians and ratios against transformers' default. Before timing, every worker
checks that its output equals the reference (kfm's per-expert loop) on the same weights: the implementations
compute the same function. Implementations: kfm with ``torch._grouped_mm`` (its default on CPU) and with the
per-expert loop; transformers with its default experts implementation (``grouped_mm``) and with ``eager`` (a loop
over the experts that received tokens). fp32 throughout; the model case uses PyTorch SDPA attention in both.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bench/kernels.py would shadow the `kernels` package transformers imports: drop bench/ from the path
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))
from bench.isolated import main, timed_steps  # noqa: E402

CASES = {  # name: (dim, experts, top_k, expert hidden, layers or 0 for one block, batch, seq, timed steps)
    "block16": (512, 16, 4, 512, 0, 4, 512, 3),
    "block64": (1024, 64, 8, 256, 0, 2, 512, 3),
    "model": (128, 8, 2, 96, 4, 4, 256, 4),
}
"""block16: the issue's shape (16 experts top-4, hidden 512); block64: a fine-grained shape kfm was not tuned on
(64 experts of 256, top-8, hidden 1024, as Qwen3-MoE/DeepSeek-style models narrow their experts); model: the
debug_moe preset's shape (4 layers of 128, 8 experts of 96, top-2, the first layer dense) routed as Qwen3-MoE
(softmax, no shared expert, no bias: the features Qwen3MoeForCausalLM has), 32768-token vocabulary."""
IMPLS = ("kfm-grouped_mm", "kfm-loop", "hf-grouped_mm", "hf-eager")
VOCAB = 32768


def describe(name: str) -> str:
    dim, experts, top_k, hidden, layers, batch, seq, _ = CASES[name]
    what = f"{layers}-layer model, vocab {VOCAB}" if layers else "one MoE block"
    return f"{name}: {what}, dim {dim}, {experts} experts of {hidden}, top-{top_k}, {batch} x {seq} tokens"


def build(name: str, impl: str):
    """(step function, output function) for one implementation, weights drawn from seed 0 and shared by all."""
    import torch
    import transformers

    from kfm.model import ModelConfig, Transformer
    from kfm.model.config import ModelRuntime, MoEConfig
    from kfm.model.layers import KernelChoice
    from kfm.model.moe import MoE
    from kfm.train.hf.convert import to_hf_config, to_hf_state_dict

    dim, experts, top_k, hidden, layers, batch, seq, _ = CASES[name]
    moe = MoEConfig(n_experts=experts, top_k=top_k, expert_hidden_dim=hidden, norm_topk_prob=True,
                    first_k_dense=1 if layers else 0)
    cfg = ModelConfig(vocab_size=VOCAB, dim=dim, n_layers=max(layers, 1), n_heads=4, n_kv_heads=2,
                      ffn_hidden_dim=3 * dim, max_seq_len=seq, qk_norm=True, tie_embeddings=True, moe=moe)
    torch.manual_seed(0)
    gemm = impl.removeprefix("kfm-") if impl.startswith("kfm") else "loop"
    runtime = ModelRuntime(kernels="torch", expert_gemm=gemm)
    if layers:
        ours = Transformer(cfg, runtime)
        ours.init_weights(seed=0)
        tokens = torch.randint(0, VOCAB, (batch, seq))
        x, targets = tokens, tokens.roll(-1, 1)
    else:
        ours = MoE(cfg, runtime, KernelChoice())
        for p in ours.parameters():
            torch.nn.init.normal_(p, std=0.05)
        x = torch.randn(batch, seq, dim)
    if impl.startswith("kfm"):
        if layers:
            return (lambda: ours(x, targets=targets).backward()), (lambda: ours(x)), ours
        return (lambda: ours(x).sum().backward()), (lambda: ours(x)), ours
    hf_cfg = to_hf_config(cfg)
    hf_cfg._attn_implementation = "sdpa"
    hf_cfg._experts_implementation = impl.removeprefix("hf-")
    if layers:
        hf = transformers.AutoModelForCausalLM.from_config(hf_cfg)
        hf.load_state_dict(to_hf_state_dict(ours.state_dict(), cfg), strict=False)
        return (lambda: hf(input_ids=x, labels=x).loss.backward()), (lambda: hf(x).logits), hf
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    hf = Qwen3MoeSparseMoeBlock(hf_cfg)
    sd = {k.removeprefix("model.layers.0.mlp."): v for k, v in to_hf_state_dict(
        {f"layers.0.feed_forward.{k}": v for k, v in ours.state_dict().items()}, cfg).items()}
    hf.load_state_dict(sd)
    return (lambda: hf(x).sum().backward()), (lambda: hf(x)), hf


def worker(name: str, impl: str) -> dict:
    import torch

    step, output, module = build(name, impl)
    _, reference, _ = build(name, "kfm-loop")
    with torch.no_grad():
        diff = (output() - reference()).abs().max().item()
    del reference
    _, _, _, _, _, batch, seq, steps = CASES[name]
    return timed_steps(step, module, steps, batch * seq) | {"max_diff": diff}


if __name__ == "__main__":
    main(__doc__, __file__, CASES, IMPLS, "hf-grouped_mm", describe, worker,
         "step memory = peak RSS - RSS after building (weights included in neither); ratios against transformers' "
         "default (hf-grouped_mm); max diff: output against kfm's per-expert loop on the same weights")
