"""kfm's latent attention against transformers' DeepseekV3Attention with the same config and weights, on CPU:
forward + backward tokens/s and peak memory.

    python bench/mla_cpu.py [--cases v2lite v3mini] [--rounds 3]

Each measurement runs in a fresh process (peak RSS belongs to one implementation); rounds alternate the
implementations; medians, ratios against transformers' SDPA path. Before timing, every worker checks its output
against kfm's layer on the same weights. Implementations: kfm (SDPA backend, values at their own width), and
transformers with ``sdpa`` and with ``eager`` attention (both decompress the keys and values the same way and
concatenate the rotated part into a new key tensor). fp32, causal, one document per row.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bench/kernels.py would shadow the `kernels` package transformers imports: drop bench/ from the path
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))
from bench.isolated import main, timed_steps  # noqa: E402
from bench.mla_layer import latent_layer  # noqa: E402

CASES = {  # name: (dim, heads, q rank, kv rank, rope dim, q/k head, v head, batch, seq, timed steps)
    "v2lite": (2048, 16, 0, 512, 64, 192, 128, 1, 1024, 3),
    "v3mini": (1024, 8, 384, 256, 32, 96, 64, 2, 777, 3),
}
"""v2lite: DeepSeek-V2-Lite's attention (hidden 2048, 16 heads, no query latent, key/value latent 512, heads of
128 + 64 and values of 128), one 1024-token row; v3mini: DeepSeek-V3's structure at a width kfm was not tuned on
(query latent, 8 heads of 64 + 32), two rows of an awkward 777 tokens."""
IMPLS = ("kfm-sdpa", "hf-sdpa", "hf-eager")


def describe(name: str) -> str:
    dim, heads, q, kv, rope, qk, v, batch, seq, _ = CASES[name]
    return (f"{name}: dim {dim}, {heads} heads of {qk - rope}+{rope} (v {v}), q rank {q or '-'}, kv rank {kv}, "
            f"{batch} x {seq} tokens")


def build(name: str, impl: str):
    """(step, output, module): one implementation, weights drawn from seed 0 and shared by all."""
    import torch
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Attention, DeepseekV3RotaryEmbedding

    from kfm.model.rope import Rotary, rope_tables

    dim, heads, q_rank, kv_rank, rope, qk, v, batch, seq, _ = CASES[name]
    cfg, ours = latent_layer(dim, heads, q_rank, kv_rank, rope, qk, v, seq, std=0.02)
    x = torch.randn(batch, seq, dim, generator=torch.Generator().manual_seed(1)).requires_grad_()
    if impl == "kfm-sdpa":
        cos, sin = rope_tables(cfg.rope_dim, seq, cfg.rope)
        rotary = Rotary(cos, sin, None, seq)
        return (lambda: ours(x, rotary).sum().backward()), (lambda: ours(x, rotary)), ours
    hf_cfg = DeepseekV3Config(hidden_size=dim, num_attention_heads=heads, num_key_value_heads=heads,
                              kv_lora_rank=kv_rank, q_lora_rank=q_rank or None, qk_rope_head_dim=rope,
                              qk_nope_head_dim=qk - rope, v_head_dim=v, max_position_embeddings=seq,
                              rope_parameters={"rope_type": "default", "rope_theta": cfg.rope.theta})
    hf_cfg._attn_implementation = impl.removeprefix("hf-")
    hf = DeepseekV3Attention(hf_cfg, 0)
    names = {"wq": "q_proj", "wq_a": "q_a_proj", "q_norm": "q_a_layernorm", "wq_b": "q_b_proj",
             "wkv_a": "kv_a_proj_with_mqa", "kv_norm": "kv_a_layernorm", "wkv_b": "kv_b_proj", "wo": "o_proj"}
    hf.load_state_dict({f"{names[n.split('.')[0]]}.weight": p for n, p in ours.state_dict().items()})
    pos = torch.arange(seq)[None]
    emb = DeepseekV3RotaryEmbedding(hf_cfg)(x, pos)
    mask = None if impl == "hf-sdpa" else torch.full((seq, seq), float("-inf")).triu(1)[None, None]
    return (lambda: hf(x, emb, mask)[0].sum().backward()), (lambda: hf(x, emb, mask)[0]), hf


def worker(name: str, impl: str) -> dict:
    import torch

    step, output, module = build(name, impl)
    _, reference, _ = build(name, "kfm-sdpa")
    with torch.no_grad():
        diff = (output() - reference()).abs().max().item()
    del reference
    saved: dict[int, int] = {}  # what the forward keeps for the backward, by storage (views counted once)

    def keep(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        output()
    batch, seq, steps = CASES[name][7:]
    return timed_steps(step, module, steps, batch * seq) | {"saved_mb": sum(saved.values()) / 2**20,
                                                            "max_diff": diff}


if __name__ == "__main__":
    main(__doc__, __file__, CASES, IMPLS, "hf-sdpa", describe, worker,
         "step memory = peak RSS - RSS after building (allocator transients of the backward included); saved = the "
         "tensors the forward keeps for the backward (exact, by storage); ratios against transformers' SDPA path; "
         "max diff: output against kfm's on the same weights", extra=(("saved for backward MB", "saved_mb"),))
