"""The MoE kernels (grouped GEMM, permute/unpermute, router choice) against their PyTorch references, outputs and
every gradient, fp32/fp16/bf16 with per-dtype tolerances relative to the reference's magnitude, at awkward shapes:
experts receiving no token, one token, all tokens; widths not a multiple of any block. Under Triton's interpreter on
CPU (see tests/test_kernels.py for what that does and does not say about a GPU)."""

import pytest
import torch

from kfm.model.config import ModelRuntime, MoEConfig
from kfm.model.kernels.grouped_gemm import grouped_mm
from kfm.model.kernels.moe_dispatch import permute, unpermute
from kfm.model.kernels.router import route_choice
from kfm.model.layers import KernelChoice
from kfm.model.moe import MoE, choose_torch, dispatch, expert_mm_loop, router_scores, unpermute_torch
from tests.helpers import KERNEL_DEVICE as DEVICE
from tests.helpers import moe_model_cfg

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
COUNTS = {"zero, one and all but three": [0, 1, 0, 37, 0, 2], "all to one expert": [0, 0, 40, 0],
          "awkward": [5, 13, 7, 1, 11, 3, 17]}


def assert_close(ours, ref, dtype, what=""):
    scale = ref.float().abs().max().clamp(min=1e-6)
    err = ((ours.float() - ref.float()).abs().max() / scale).item()
    assert err < TOL[dtype], f"{what}: relative error {err:.3g} in {dtype}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("counts", COUNTS.values(), ids=COUNTS.keys())
@pytest.mark.parametrize("k, n", [(19, 23), (64, 40)])
def test_grouped_gemm_matches_the_per_expert_loop(counts, dtype, k, n):
    g = torch.Generator().manual_seed(len(counts) + k)
    counts = torch.tensor(counts, device=DEVICE)
    x = torch.randn(int(counts.sum()), k, generator=g).to(DEVICE, dtype).requires_grad_()
    w = torch.randn(len(counts), n, k, generator=g).to(DEVICE, dtype).requires_grad_()
    dy = torch.randn(x.shape[0], n, generator=g).to(DEVICE, dtype)
    results = []
    for mm in (expert_mm_loop, grouped_mm):
        y = mm(x, w, counts)
        y.backward(dy)
        results.append((y, x.grad, w.grad))
        x.grad = w.grad = None
    for what, ours, ref in zip(("y", "dx", "dw"), results[1], results[0]):
        assert_close(ours, ref, dtype, what)
    assert torch.count_nonzero(results[1][2][counts == 0]) == 0  # an expert with no rows gets no gradient


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens, k, n_experts, dim, capacity", [(37, 2, 6, 51, None), (1, 4, 4, 8, None),
                                                                  (64, 3, 5, 130, 20), (12, 1, 3, 33, 1)])
def test_permute_and_unpermute_match_the_reference(dtype, tokens, k, n_experts, dim, capacity):
    g = torch.Generator().manual_seed(tokens + dim)
    experts = torch.stack([torch.randperm(n_experts, generator=g)[:k] for _ in range(tokens)]).to(DEVICE)
    plan = dispatch(experts, n_experts, capacity)
    x = torch.randn(tokens, dim, generator=g).to(DEVICE, dtype).requires_grad_()
    weights = torch.rand(tokens, k, generator=g).to(DEVICE).requires_grad_()
    lift = torch.randn(dim, dim, generator=g).to(DEVICE, dtype)  # an "expert": rows must be told apart
    dy = torch.randn(tokens, dim, generator=g).to(DEVICE, dtype)
    y = unpermute(permute(x, plan.src, plan.pos) @ lift, plan.pos, weights, plan.src, plan.pairs)
    y.backward(dy)
    # the reference in fp32 (its index backward would sum in bf16, less exactly than the kernels' fp32 sums)
    x32, w32 = x.detach().float().requires_grad_(), weights.detach().clone().requires_grad_()
    ref = unpermute_torch(x32[plan.src] @ lift.float(), plan.pos, w32)
    ref.backward(dy.float())
    for what, ours, theirs in (("y", y, ref), ("dx", x.grad, x32.grad), ("dweights", weights.grad, w32.grad)):
        assert_close(ours, theirs, dtype, what)


ROUTERS = {
    "softmax top-2 of 6": MoEConfig(n_experts=6, top_k=2, expert_hidden_dim=8),
    "softmax top-8 of 128": MoEConfig(n_experts=128, top_k=8, expert_hidden_dim=8),
    "sigmoid, bias, 8 groups of 24 keep 4": MoEConfig(n_experts=192, top_k=8, expert_hidden_dim=8,
                                                     score_func="sigmoid", n_group=8, topk_group=4,
                                                     expert_bias=True),
    "sigmoid, bias, 3 groups of 2 keep 1": MoEConfig(n_experts=6, top_k=2, expert_hidden_dim=8, score_func="sigmoid",
                                                    n_group=3, topk_group=1, expert_bias=True),
    "top-1 of 1": MoEConfig(n_experts=1, top_k=1, expert_hidden_dim=8),
}


@pytest.mark.parametrize("cfg", ROUTERS.values(), ids=ROUTERS.keys())
def test_router_kernel_chooses_as_the_reference(cfg):
    g = torch.Generator().manual_seed(cfg.n_experts)
    logits = (torch.randn(53, cfg.n_experts, generator=g) * 2).to(DEVICE)
    bias = (torch.randn(cfg.n_experts, generator=g) * 0.1).to(DEVICE) if cfg.expert_bias else None
    scores, experts = route_choice(logits, bias, cfg.top_k, cfg.score_func, cfg.n_group, cfg.topk_group)
    ref_scores = router_scores(logits, cfg.score_func)
    ref = choose_torch(ref_scores, bias, cfg)
    assert torch.equal(experts, ref)
    assert_close(scores, ref_scores.gather(1, ref), torch.float32, "chosen scores")


def relative_error(ours, ref) -> float:
    return ((ours.float() - ref.float()).abs().max() / ref.float().abs().max().clamp(min=1e-6)).item()


@pytest.mark.parametrize("dtype", DTYPES)
def test_moe_layer_with_kernels_matches_the_plain_layer(dtype):
    """The whole layer (router, permute, grouped GEMM, SwiGLU, unpermute, shared expert) with kfm's kernels and the
    plain PyTorch layer, both in ``dtype``, against the plain layer in fp32 on the same (rounded) weights and input:
    output and every gradient within the dtype's tolerance, or at most 1.5x the plain layer's own error in that
    dtype (several roundings in a row: in bf16 the plain layer's input gradient is off by about 2%)."""
    cfg = moe_model_cfg(seq_aux_loss_coef=0.01)
    torch.manual_seed(0)
    weights = MoE(cfg, ModelRuntime(), KernelChoice())
    for p in weights.parameters():
        torch.nn.init.normal_(p, std=0.3)
    weights.expert_bias.normal_(std=0.05)
    state = {k: v.to(dtype).float() for k, v in weights.state_dict().items()}  # values every dtype holds exactly
    x = torch.randn(3, 13, 32, generator=torch.Generator().manual_seed(1)).to(dtype).float()
    dy = torch.randn(3, 13, 32, generator=torch.Generator().manual_seed(2)).to(dtype).float()
    runs = {}
    for name, kernels, gemm, run_dtype in (("reference", "torch", "loop", torch.float32),
                                           ("plain", "torch", "loop", dtype), ("kernels", "triton", "triton", dtype)):
        layer = MoE(cfg, ModelRuntime(kernels=kernels, expert_gemm=gemm), KernelChoice(kernels))
        layer.load_state_dict(state)
        layer = layer.to(DEVICE, run_dtype).train()
        layer.expert_bias.data = layer.expert_bias.float()
        xi = x.to(DEVICE, run_dtype).detach().requires_grad_()
        y = layer(xi)
        y.backward(dy.to(DEVICE, run_dtype))
        runs[name] = {"y": y, "dx": xi.grad, **{n: p.grad for n, p in layer.named_parameters()}}
    for what, ref in runs["reference"].items():
        plain = relative_error(runs["plain"][what], ref)
        ours = relative_error(runs["kernels"][what], ref)
        assert ours < max(TOL[dtype], 1.5 * plain), f"{what}: {ours:.3g} (the plain layer in {dtype}: {plain:.3g})"
