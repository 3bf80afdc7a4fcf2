"""Attention forward + backward on one GPU: kfm's Triton kernel against cuDNN, FlashAttention (SDPA's flash
backend, and flash-attn where installed), SDPA with an explicit mask and FlexAttention, one causal document a row
and packed documents, with each output's and gradient's largest difference to a float32 reference.

    python bench/gpu/attention.py --out bench/results [--models 8b 32b] [--seqs 4096 8192]
    python bench/gpu/attention.py --smoke --out DIR     # CPU: tiny shapes, Triton interpreter, checks only

Shapes: the attention of Llama-3-8B (32 query heads, 8 key/value heads, head dim 128) and of a 32B model
(40 / 8 / 128), batch 1, bf16. Packed documents: the row cut at random lengths (exponential, mean 1,024, at least
16), the same cuts for every implementation. Timing: ``triton.testing.do_bench`` (median), forward plus
backward; TFLOP/s count the work inside the mask only (causal: half the square; packed: the sum over documents),
the forward's ``4 * h * d`` per allowed query-key pair and 2.5x that backward, so masked implementations are not
credited for the work they skip. The reference: the same inputs in float32 through SDPA's math backend with the
dense mask. kfm's kernel picks its block sizes per head dim (``kfm.model.kernels.flash_attention``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path


SHAPES = {"8b": (32, 8, 128), "32b": (40, 8, 128)}  # query heads, key/value heads, head dim


def doc_ids(seq: int, packed: bool, mean: int, seed: int = 0):
    import torch

    if not packed:
        return torch.zeros(1, seq, dtype=torch.int32)
    g = torch.Generator().manual_seed(seed)
    lengths = (torch.empty(seq // 16 + 2).exponential_(1.0 / mean, generator=g).long().clamp(min=16))
    starts = [0, *[int(s) for s in lengths.cumsum(0) if s < seq]]
    if len(starts) == 1:  # packed means at least two documents
        starts.append(seq // 2)
    ids = torch.zeros(seq, dtype=torch.int32)
    for i, s in enumerate(starts):
        ids[s:] = i
    return ids[None]


def allowed_pairs(ids) -> int:
    """Query-key pairs inside the causal, same-document mask."""
    counts = ids[0].bincount().long()
    return int((counts * (counts + 1) // 2).sum())


def implementations(ids, device: str, smoke: bool):
    import torch
    import torch.nn.functional as F

    from kfm.model.kernels.flash_attention import flash_attention

    packed = bool(ids.max() > 0)
    dense = (ids[0][:, None] == ids[0][None, :]) & torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).tril()
    dense = dense.to(device)
    d_ids = ids.to(device)
    impls = {"kfm triton": lambda q, k, v: flash_attention(q, k, v, d_ids if packed else None)}
    if packed:
        impls["sdpa with mask"] = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=dense,
                                                                                 enable_gqa=True)
    else:
        impls["sdpa default"] = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                               enable_gqa=True)
    if device == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        if not packed:
            for name, backend in (("sdpa cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa flash", SDPBackend.FLASH_ATTENTION)):
                def fn(q, k, v, backend=backend):
                    with sdpa_kernel(backend):
                        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                impls[name] = fn
        doc = ids[0].to(device)

        def mask_mod(b, h, qi, ki):
            return (qi >= ki) & (doc[qi] == doc[ki])

        block = create_block_mask(mask_mod, 1, None, ids.shape[1], ids.shape[1], device=device)
        flex = torch.compile(flex_attention)
        impls["flex (compiled)"] = lambda q, k, v: flex(q, k, v, block_mask=block, enable_gqa=True)
        if importlib.util.find_spec("flash_attn"):
            from flash_attn import flash_attn_varlen_func

            lengths = ids[0].bincount().to(device, torch.int32)
            cu = torch.nn.functional.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
            longest = int(lengths.max())

            def varlen(q, k, v):
                out = flash_attn_varlen_func(q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1),
                                             cu, cu, longest, longest, causal=True)
                return out.transpose(0, 1)[None]
            impls["flash-attn varlen"] = varlen
    return impls, dense


def rows_for(model: str, seq: int, packed: bool, device: str, dtype, smoke: bool):
    import torch
    import torch.nn.functional as F

    heads, kv, hd = SHAPES[model] if not smoke else (4, 2, 16)
    ids = doc_ids(seq, packed, mean=1024 if not smoke else 8)
    g = torch.Generator().manual_seed(1)
    q32, k32, v32 = (torch.randn(1, h, seq, hd, generator=g) for h in (heads, kv, kv))
    do32 = torch.randn(1, heads, seq, hd, generator=g)
    impls, dense = implementations(ids, device, smoke)
    # float32 reference: SDPA's math backend, keys and values repeated per query group, dense mask
    ref_in = [t.to(device).clone().requires_grad_() for t in (q32, k32, v32)]
    rep = heads // kv
    ref = F.scaled_dot_product_attention(ref_in[0], ref_in[1].repeat_interleave(rep, 1),
                                         ref_in[2].repeat_interleave(rep, 1), attn_mask=dense)
    ref.backward(do32.to(device))
    ref_grads = [t.grad for t in ref_in]
    flops = allowed_pairs(ids) * 4 * heads * hd * 3.5
    rows = []
    for name, fn in impls.items():
        q, k, v = (t.to(device, dtype).clone().requires_grad_() for t in (q32, k32, v32))
        do = do32.to(device, dtype)
        try:
            out = fn(q, k, v)
            out.backward(do)
            err_out = (out.float() - ref.float()).abs().max().item()
            err_grad = max((t.grad.float() - r.float()).abs().max().item() for t, r in zip((q, k, v), ref_grads))
            ms = None
            if not smoke:
                import triton.testing

                def run():
                    for t in (q, k, v):
                        t.grad = None
                    fn(q, k, v).backward(do)
                ms = triton.testing.do_bench(run, warmup=5, rep=40, return_mode="median")
        except Exception as e:  # noqa: BLE001 - a backend that cannot run this shape is reported, not fatal
            rows.append((model, seq, "packed" if packed else "one", name, "-", f"unavailable: {type(e).__name__}",
                         "-", "-"))
            continue
        tflops = "-" if ms is None else f"{flops / ms / 1e9:.0f}"
        rows.append((model, seq, "packed" if packed else "one", name, "-" if ms is None else f"{ms:.2f}", tflops,
                     f"{err_out:.1e}", f"{err_grad:.1e}"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for gpu_attention.md")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--models", nargs="+", default=list(SHAPES))
    ap.add_argument("--seqs", nargs="+", type=int, default=[4096, 8192])
    args = ap.parse_args()
    import torch

    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if device == "cpu" and not args.smoke:
        sys.exit("no GPU: timings need CUDA; run with --smoke to check the script end to end")
    if device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "cpu (smoke: no timings)"
    models, seqs = (args.models[:1], [40]) if args.smoke else (args.models, args.seqs)
    lines = ["# Attention forward + backward on one GPU", "",
             f"GPU {gpu}, torch {torch.__version__}, CUDA {torch.version.cuda or '-'}; batch 1, "
             f"{'bf16' if dtype == torch.bfloat16 else 'fp32'}. `python bench/gpu/attention.py` (bench/gpu/suite.sh). "
             "TFLOP/s count only the work inside the mask; differences are to a float32 reference.", "",
             "| shape | seq | documents | implementation | fwd+bwd ms | TFLOP/s | max diff out | max diff grads |",
             "|---|---:|---|---|---:|---:|---:|---:|"]
    args.out.mkdir(parents=True, exist_ok=True)
    for model in models:
        for seq in seqs:
            for packed in (False, True):
                for row in rows_for(model, seq, packed, device, dtype, args.smoke):
                    lines.append("| " + " | ".join(str(c) for c in row) + " |")
                (args.out / "gpu_attention.md").write_text("\n".join(lines) + "\n")  # kept if the suite stops it
    print("\n".join(lines))


if __name__ == "__main__":
    main()
