"""The mixture-of-experts layer (kfm.model.moe): routing, dispatch, the expert GEMM implementations against the
per-expert loop, balancing losses and statistics, exact parameter and FLOP accounting, refused configs."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import FlopCounterMode

from kfm.model import Transformer
from kfm.model.accounting import flops_per_token, num_params
from kfm.model.config import ModelRuntime, MoEConfig
from kfm.model.layers import KernelChoice
from kfm.model.moe import (MoE, balance_loss, dispatch, expert_gemm_impl, expert_mm_grouped, expert_mm_loop,
                           moe_layers, route_torch, unpermute_torch)
from tests.helpers import moe_model_cfg

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
"""Per-dtype tolerance, relative to the largest magnitude of the reference."""


def close(a: torch.Tensor, b: torch.Tensor, dtype) -> bool:
    scale = b.float().abs().max().clamp(min=1e-6)
    return ((a.float() - b.float()).abs().max() / scale).item() < TOL[dtype]


COUNTS = {"zero, one and all but one": [0, 1, 0, 37, 0, 2], "all to one expert": [0, 0, 40, 0, 0, 0],
          "awkward": [5, 13, 7, 1, 11, 3]}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("counts", COUNTS.values(), ids=COUNTS.keys())
def test_grouped_mm_matches_the_per_expert_loop_with_gradients(counts, dtype):
    torch.manual_seed(0)
    counts = torch.tensor(counts)
    x = torch.randn(int(counts.sum()), 24, dtype=dtype, requires_grad=True)
    w = torch.randn(len(counts), 40, 24, dtype=dtype, requires_grad=True)
    dy = torch.randn(x.shape[0], 40, dtype=dtype)
    outs = []
    for mm in (expert_mm_loop, expert_mm_grouped):
        y = mm(x, w, counts)
        y.backward(dy)
        outs.append((y.detach(), x.grad.clone(), w.grad.clone()))
        x.grad = w.grad = None
    for ours, ref in zip(outs[1], outs[0]):
        assert close(ours, ref, dtype)


def test_grouped_mm_is_chosen_only_for_aligned_widths():
    x = torch.zeros(4, 19)
    assert expert_gemm_impl("auto", x, False, (19, 24)) == "loop"
    assert expert_gemm_impl("auto", x, True, (19, 24)) == "triton"
    assert expert_gemm_impl("auto", torch.zeros(4, 32, dtype=torch.bfloat16), False, (32, 24)) == "grouped_mm"
    with pytest.raises(RuntimeError, match="multiples of 16 bytes in torch.float32: choose triton or loop"):
        expert_gemm_impl("grouped_mm", x, False, (19, 24))


def test_dispatch_places_every_pair_and_a_capacity_drops_the_latest():
    experts = torch.tensor([[0, 2], [2, 1], [2, 0], [1, 2]])
    plan = dispatch(experts, 4)
    assert plan.counts.tolist() == [2, 2, 4, 0] and plan.dropped.item() == 0
    assert plan.src.tolist() == [0, 2, 1, 3, 0, 1, 2, 3]  # by expert, token order within one
    for t in range(4):
        for k in range(2):
            assert plan.src[plan.pos[t, k]] == t
    capped = dispatch(experts, 4, capacity=3)
    assert capped.counts.tolist() == [2, 2, 3, 0] and capped.load.tolist() == [2, 2, 4, 0]
    assert capped.dropped.item() == 1 and capped.pos[3, 1].item() == -1  # token 3's choice of expert 2 went last
    y = unpermute_torch(torch.ones(7, 3), capped.pos, torch.ones(4, 2))
    assert y[:, 0].tolist() == [2.0, 2.0, 2.0, 1.0]


def test_routing_picks_by_score_plus_bias_within_the_best_groups():
    cfg = MoEConfig(n_experts=8, top_k=2, expert_hidden_dim=4, score_func="sigmoid", n_group=4, topk_group=1,
                    norm_topk_prob=True, routed_scaling_factor=2.0)
    logits = torch.tensor([[3.0, -5, 2.9, 2.8, -5, -5, -5, -5]])
    weights, experts = route_torch(logits, None, cfg)
    # a group scores the sum of its two best: group 1 (experts 2, 3) beats group 0, whose expert 0 is the best one
    assert sorted(experts[0].tolist()) == [2, 3]
    assert torch.allclose(weights.sum(), torch.tensor(2.0))  # normalised, then scaled
    bias = torch.tensor([0.0, 0, -10, 0, 0, 0, 0, 0])  # the bias only chooses: group 0 now, weights unbiased
    weights, experts = route_torch(logits, bias, cfg)
    assert experts[0].tolist() == [0, 1]
    s = torch.sigmoid(torch.tensor([3.0, -5.0]))
    assert torch.allclose(weights[0], 2 * s / s.sum())
    softmax = MoEConfig(n_experts=8, top_k=3, expert_hidden_dim=4)
    weights, experts = route_torch(logits, None, softmax)
    assert experts[0].tolist() == [0, 2, 3] and torch.allclose(weights[0], logits.softmax(-1)[0, [0, 2, 3]])


def test_layer_implementations_agree_and_the_aux_loss_reaches_only_the_gradient():
    cfg = moe_model_cfg(seq_aux_loss_coef=0.1, batch_aux_loss_coef=0.1, z_loss_coef=0.01)
    torch.manual_seed(0)
    grads = {}
    for impl in ("loop", "grouped_mm"):
        layer = MoE(cfg, ModelRuntime(expert_gemm=impl), KernelChoice())
        torch.manual_seed(1)
        for p in layer.parameters():
            torch.nn.init.normal_(p, std=0.2)
        layer.expert_bias.normal_(std=0.1)
        x = torch.randn(3, 11, 32, requires_grad=True)
        y = layer.eval()(x)
        y_train = layer.train()(x)
        assert torch.equal(y, y_train)  # the auxiliary losses do not change the output...
        y_train.sum().backward()
        grads[impl] = (y.detach(), x.grad, layer.router.weight.grad, layer.experts.w13.grad)
        stats = layer.take_stats()
        assert stats["load"].sum().item() == 3 * 11 * 2 and stats["aux"].item() > 0
        assert layer.take_stats() is None
    for a, b in zip(grads["grouped_mm"], grads["loop"]):
        assert close(a, b, torch.float32)
    layer.zero_grad()
    layer.train()(x).sum().backward()
    with_aux = layer.router.weight.grad.clone()
    layer.moe.seq_aux_loss_coef = layer.moe.batch_aux_loss_coef = layer.moe.z_loss_coef = 0.0
    layer.zero_grad()
    layer.train()(x).sum().backward()
    assert not torch.allclose(with_aux, layer.router.weight.grad)  # ...but they do reach the router's gradient


def test_balance_loss_is_one_when_balanced_and_grows_with_concentration():
    scores = torch.ones(8, 4)
    balanced = torch.tensor([[0], [1], [2], [3], [0], [1], [2], [3]])
    assert math.isclose(balance_loss(scores, balanced, 2, 4).item(), 1.0, rel_tol=1e-6)
    skewed_scores = torch.tensor([[10.0, 1, 1, 1]]).repeat(8, 1)
    assert balance_loss(skewed_scores, torch.zeros(8, 1, dtype=torch.long), 1, 4).item() > 2.5


def test_statistics_come_from_training_forwards_once_even_with_activation_checkpointing():
    cfg = moe_model_cfg(seq_aux_loss_coef=0.1, z_loss_coef=0.01)
    layer = MoE(cfg, ModelRuntime(), KernelChoice())
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(2, 5, 32, requires_grad=True)
    with torch.no_grad():
        layer.eval()(x)
    assert layer.take_stats() is None
    layer.train()
    layer(x).sum().backward()
    plain = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    layer.take_stats()
    checkpoint(layer, x, use_reentrant=False).sum().backward()  # the forward runs again inside the backward
    assert layer.take_stats()["load"].sum().item() == 2 * 5 * 2
    for a, b in zip((p.grad for p in layer.parameters()), plain):  # the auxiliary losses' gradient too
        assert torch.allclose(a, b, atol=1e-6)


def test_a_capacity_factor_drops_pairs_and_counts_them():
    torch.manual_seed(0)
    outs = {}
    for factor in (0.0, 0.5):
        layer = MoE(moe_model_cfg(capacity_factor=factor, n_group=1), ModelRuntime(), KernelChoice())
        torch.manual_seed(1)
        for p in layer.parameters():
            torch.nn.init.normal_(p, std=0.2)
        layer.expert_bias.zero_()
        outs[factor] = layer.train()(torch.randn(4, 16, 32, generator=torch.Generator().manual_seed(2)))
        stats = layer.take_stats()
        pairs, load = 4 * 16 * 2, stats["load"]
        capacity = math.ceil(factor * 4 * 16 * 2 / 8)
        expected = (load - capacity).clamp(min=0).sum().item() if factor else 0
        assert stats["dropped"].item() == expected and load.sum().item() == pairs
    assert stats["dropped"].item() > 0 and not torch.allclose(outs[0.0], outs[0.5])
    with torch.no_grad():  # evaluation is dropless
        assert torch.allclose(layer.eval()(torch.randn(4, 16, 32, generator=torch.Generator().manual_seed(2))),
                              outs[0.0].detach(), atol=1e-6)


def test_expert_bias_moves_towards_equal_load():
    layer = MoE(moe_model_cfg(), ModelRuntime(), KernelChoice())
    layer.expert_bias.zero_()
    layer.update_expert_bias(torch.tensor([10.0, 0, 5, 5, 5, 5, 5, 5]), rate=0.01)  # mean 5
    assert layer.expert_bias.tolist()[:3] == pytest.approx([-0.01, 0.01, 0.0])


def test_flops_per_token_equal_the_flop_counter_within_one_percent():
    cfg = moe_model_cfg(n_shared_experts=2)
    model = Transformer(cfg, ModelRuntime(expert_gemm="loop"))  # FlopCounterMode does not count _grouped_mm
    model.init_weights(seed=0)
    tokens = torch.randint(0, 256, (2, 48))
    with sdpa_kernel(SDPBackend.MATH):  # attention as matrix products, which the counter sees
        with FlopCounterMode(display=False) as fwd:
            model(tokens)
        with FlopCounterMode(display=False) as both:
            F.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten()).backward()
    expected = flops_per_token(cfg, 48) * tokens.numel()
    assert abs(fwd.get_total_flops() / expected - 1) < 0.01
    assert abs(both.get_total_flops() / (3 * expected) - 1) < 0.01
    assert num_params(cfg, active=True) < num_params(cfg) == sum(p.numel() for p in model.parameters())


def test_the_model_finds_its_moe_layers_and_dense_first_layers():
    model = Transformer(moe_model_cfg())
    assert len(moe_layers(model)) == 2 and not isinstance(model.layers[0].feed_forward, MoE)
    assert "layers.1.feed_forward.expert_bias" in model.state_dict()


@pytest.mark.parametrize("moe, message", [
    (dict(top_k=9), r"model.moe.top_k=9 must be between 1 and model.moe.n_experts=8: lower top_k or add experts"),
    (dict(n_group=3), r"model.moe.n_group=3 must divide model.moe.n_experts=8: choose a divisor"),
    (dict(n_group=2, topk_group=3), r"model.moe.topk_group=3 must be between 1 and model.moe.n_group=2"),
    (dict(n_group=4, topk_group=1, top_k=3), r"top_k=3 exceeds the 2 experts in model.moe.topk_group=1 groups"),
    (dict(expert_hidden_dim=0), r"set model.moe.expert_hidden_dim"),
    (dict(score_func="relu"), r"model.moe.score_func must be one of softmax, sigmoid"),
])
def test_bad_moe_configs_are_refused_naming_the_fix(moe, message):
    base = dict(n_experts=8, top_k=2, expert_hidden_dim=16)
    with pytest.raises(ValueError, match=message):
        MoEConfig(**{**base, **moe})


def test_first_k_dense_must_leave_a_moe_layer():
    with pytest.raises(ValueError, match="first_k_dense=3 leaves no MoE layer in model.n_layers=3"):
        moe_model_cfg(first_k_dense=3)
