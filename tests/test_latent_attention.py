"""Multi-head latent attention: a float64 reference written from the formulas (outputs and every gradient) at
awkward shapes, with packed documents and a window, through each CPU backend; equal to `transformers`'
DeepSeek-V3 attention on the same weights; exact parameter and FLOP accounting with MoE and multi-token
prediction; refused configs."""

import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from kfm.model import ModelConfig, Transformer
from kfm.model.accounting import flops_per_token, num_params
from kfm.model.attention import Documents, attention_mask
from kfm.model.config import ModelRuntime
from kfm.model.latent_attention import LatentAttention
from kfm.model.layers import KernelChoice, RMSNorm
from kfm.model.rope import Rotary, rope_tables
from tests.helpers import KERNEL_DEVICE, mla_model_cfg


def rms(x, w, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_pairs(x, pos, theta, interleaved):
    """RoPE written directly: pair j (adjacent dims 2j, 2j+1 when interleaved, else j and j + d/2) turned by
    pos * theta^(-2j/d), in place."""
    d = x.shape[-1]
    angle = pos[..., None].double() * theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    cos, sin = angle.cos()[:, None], angle.sin()[:, None]  # (batch, 1, seq, d/2)
    a, b = (x[..., 0::2], x[..., 1::2]) if interleaved else (x[..., : d // 2], x[..., d // 2:])
    ra, rb = a * cos - b * sin, a * sin + b * cos
    return torch.stack([ra, rb], -1).flatten(-2) if interleaved else torch.cat([ra, rb], -1)


def mla_reference(x, w: dict, cfg: ModelConfig, pos, allowed):
    """Latent attention in float64 from DeepSeek-V3's equations (arXiv 2412.19437, eq. 1-11)."""
    m, h, d = cfg.mla, cfg.n_heads, cfg.head_size
    b, s, _ = x.shape
    rope, nope = m.qk_rope_head_dim, d - m.qk_rope_head_dim
    q = rms(x @ w["wq_a"].T, w["q_norm"]) @ w["wq_b"].T if m.q_lora_rank else x @ w["wq"].T
    q = q.view(b, s, h, d).transpose(1, 2)
    ckv = x @ w["wkv_a"].T
    kv = (rms(ckv[..., : m.kv_lora_rank], w["kv_norm"]) @ w["wkv_b"].T).view(b, s, h, nope + m.v_head_dim)
    k_nope, v = kv.transpose(1, 2).split([nope, m.v_head_dim], -1)
    k_rope = rotate_pairs(ckv[..., m.kv_lora_rank:][:, None], pos, cfg.rope.theta, m.rope_interleave)
    q = torch.cat([q[..., :nope], rotate_pairs(q[..., nope:], pos, cfg.rope.theta, m.rope_interleave)], -1)
    k = torch.cat([k_nope, k_rope.expand(-1, h, -1, -1)], -1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)
    out = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v
    return out.transpose(1, 2).reshape(b, s, -1) @ w["wo"].T


def layer_and_inputs(cfg, seq, layouts, seed=0):
    torch.manual_seed(seed)
    layer = LatentAttention(cfg, 0, ModelRuntime(), RMSNorm, KernelChoice())
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.copy_(torch.rand_like(p) + 0.5 if "norm" in name else torch.randn_like(p) * 0.3)
    x = torch.randn(len(layouts), seq, cfg.dim)
    cu = [torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()]) for lens in layouts]
    docs = Documents.from_cu_seqlens(cu, seq) if any(len(lens) > 1 for lens in layouts) else None
    pos = torch.stack([torch.cat([torch.arange(n) for n in lens]) for lens in layouts])
    return layer, x, docs, pos


@pytest.mark.parametrize("backend", ["sdpa", "flex", "triton"])
@pytest.mark.parametrize("case", [
    dict(seq=13, layouts=[[13], [13]], window=0, mla={}),
    dict(seq=37, layouts=[[5, 19, 1, 12], [37]], window=0, mla=dict(rope_interleave=False)),
    dict(seq=29, layouts=[[29], [7, 22]], window=5, mla=dict(q_lora_rank=0)),
])
def test_latent_attention_equals_a_float64_reference_with_its_gradients(backend, case):
    cfg = mla_model_cfg(case["mla"], sliding_window=case["window"], layer_pattern="L" if case["window"] else "G")
    layer, x, docs, pos = layer_and_inputs(cfg, case["seq"], case["layouts"])
    layer.backend = backend
    rotary_cos, rotary_sin = rope_tables(cfg.rope_dim, cfg.max_seq_len, cfg.rope)
    positions = pos if docs is not None else None
    rotary = Rotary(rotary_cos, rotary_sin, positions, case["seq"])
    backward = backend != "flex"  # FlexAttention has no backward on CPU (PyTorch raises): outputs only
    x32 = x.clone().requires_grad_(backward)
    with torch.set_grad_enabled(backward):
        out = layer(x32, rotary, docs)
    weights = {n.split(".")[0]: p.detach().double().requires_grad_() for n, p in layer.named_parameters()}
    x64 = x.double().requires_grad_()
    allowed = attention_mask(case["seq"], docs, case["window"])
    ref = mla_reference(x64, weights, cfg, pos, allowed)
    assert (out.double() - ref).abs().max().item() < 1e-5
    if not backward:
        return
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    ref.backward(grad_out.double())
    assert (x32.grad.double() - x64.grad).abs().max().item() < 1e-5
    for name, p in layer.named_parameters():
        g = weights[name.split(".")[0]].grad
        assert (p.grad.double() - g).abs().max().item() < 1e-5 * max(1.0, g.abs().max().item()), name


def test_the_triton_backend_matches_sdpa_in_half_precision():
    cfg = mla_model_cfg(sliding_window=6, layer_pattern="L")
    layer, x, docs, pos = layer_and_inputs(cfg, 33, [[9, 24], [33]])
    cos, sin = rope_tables(cfg.rope_dim, cfg.max_seq_len, cfg.rope)
    rotary = Rotary(cos, sin, pos, 33)
    outs, grads = {}, {}
    for backend in ("sdpa", "triton"):
        layer.backend, layer._attention = backend, {}
        xb = x.to(KERNEL_DEVICE, torch.bfloat16).requires_grad_()
        lb = layer.to(KERNEL_DEVICE, torch.bfloat16)
        out = lb(xb, Rotary(cos.to(KERNEL_DEVICE), sin.to(KERNEL_DEVICE), pos.to(KERNEL_DEVICE), 33), docs)
        out.float().square().sum().backward()
        outs[backend], grads[backend] = out.float(), xb.grad.float()
        lb.zero_grad()
    assert (outs["sdpa"] - outs["triton"]).abs().max().item() < 0.02 * outs["sdpa"].abs().max().item()  # bf16 ulps
    assert (grads["sdpa"] - grads["triton"]).abs().max().item() < 0.05 * grads["sdpa"].abs().max().item()


@pytest.mark.parametrize("mla", [{}, dict(rope_interleave=False), dict(q_lora_rank=0)])
def test_equal_to_transformers_deepseek_v3_attention(mla):
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Attention, DeepseekV3RotaryEmbedding

    cfg = mla_model_cfg(mla)
    layer, x, _, _ = layer_and_inputs(cfg, 21, [[21]])
    m = cfg.mla
    hf_cfg = DeepseekV3Config(hidden_size=cfg.dim, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_heads,
                              kv_lora_rank=m.kv_lora_rank, q_lora_rank=m.q_lora_rank or None,
                              qk_rope_head_dim=m.qk_rope_head_dim, qk_nope_head_dim=cfg.head_size - m.qk_rope_head_dim,
                              v_head_dim=m.v_head_dim, rope_interleave=m.rope_interleave, max_position_embeddings=64,
                              rope_parameters={"rope_type": "default", "rope_theta": cfg.rope.theta})
    hf_cfg._attn_implementation = "eager"
    hf = DeepseekV3Attention(hf_cfg, 0).eval()
    names = {"wq": "q_proj", "wq_a": "q_a_proj", "q_norm": "q_a_layernorm", "wq_b": "q_b_proj",
             "wkv_a": "kv_a_proj_with_mqa", "kv_norm": "kv_a_layernorm", "wkv_b": "kv_b_proj", "wo": "o_proj"}
    hf.load_state_dict({f"{names[n.split('.')[0]]}.weight": p for n, p in layer.state_dict().items()})
    pos = torch.arange(21)[None]
    mask = torch.full((21, 21), float("-inf")).triu(1)[None, None]
    cos, sin = rope_tables(cfg.rope_dim, cfg.max_seq_len, cfg.rope)
    with torch.no_grad():
        theirs = hf(x, DeepseekV3RotaryEmbedding(hf_cfg)(x, pos), mask)[0]
        ours = layer(x, Rotary(cos, sin, None, 21))
    assert (ours - theirs).abs().max().item() < 1e-5


def test_parameters_and_flops_are_counted_exactly_with_moe_and_mtp(monkeypatch):
    """FlopCounterMode sees the plain cross-entropy (the fused one computes the gradient in the forward)."""
    import kfm.model.transformer as transformer
    from kfm.model.kernels.linear_cross_entropy import linear_cross_entropy_reference

    monkeypatch.setattr(transformer, "linear_cross_entropy", lambda h, w, t, z_loss=0.0, chunk=None, use_triton=False:
                        linear_cross_entropy_reference(h.flatten(0, -2), w, t.flatten(), z_loss=z_loss))
    for q_rank in (20, 0):
        cfg = mla_model_cfg(dict(q_lora_rank=q_rank), moe=dict(post_norm=True), mtp=dict(depth=2))
        model = Transformer(cfg, ModelRuntime(expert_gemm="loop")).train()
        model.init_weights(seed=0)
        assert sum(p.numel() for p in model.parameters()) == num_params(cfg)
        tokens = torch.randint(0, cfg.vocab_size, (2, 49))
        with sdpa_kernel(SDPBackend.MATH):
            with FlopCounterMode(display=False) as fwd:
                model(tokens[:, :-1], targets=tokens[:, 1:])
            with FlopCounterMode(display=False) as both:
                model(tokens[:, :-1], targets=tokens[:, 1:]).backward()
        expected = flops_per_token(cfg, 48) * 96
        assert abs(fwd.get_total_flops() / expected - 1) < 0.01
        assert abs(both.get_total_flops() / (3 * expected) - 1) < 0.01
        assert flops_per_token(cfg, 48, mtp=False) < expected
        assert num_params(cfg, mtp=False) < num_params(cfg)


@pytest.mark.parametrize("change, message", [
    (dict(mla=dict(kv_lora_rank=64)), r"kv_lora_rank=64 is larger than model.dim=48"),
    (dict(mla=dict(qk_rope_head_dim=5)), r"qk_rope_head_dim must be positive and even"),
    (dict(mla=dict(qk_rope_head_dim=16)), r"qk_rope_head_dim=16 is larger than the q/k head width model.head_dim=14"),
    (dict(head_dim=None), r"set model.head_dim"),
    (dict(n_kv_heads=2), r"set model.n_kv_heads = model.n_heads \(4\)"),
    (dict(qk_norm=True), r"model.qk_norm has no meaning with latent attention"),
])
def test_bad_latent_attention_configs_are_refused_naming_the_fix(change, message):
    raw = mla_model_cfg().to_dict()
    for key, value in change.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) else value
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict(raw)


def test_yarn_with_deepseek_mscale_scales_the_softmax_and_the_rotation():
    from kfm.model.config import RopeConfig

    rope = RopeConfig(theta=10000.0, scaling="yarn", factor=40.0, original_max_seq_len=4096, mscale=1.0,
                      mscale_all_dim=1.0)
    assert rope.attention_factor == pytest.approx(1.0)  # DeepSeek-V3: m(1) / m(1)
    assert rope.softmax_factor == pytest.approx((0.1 * math.log(40.0) + 1) ** 2)
    with pytest.raises(ValueError, match="belong to yarn scaling"):
        RopeConfig(mscale=1.0)


def test_a_latent_attention_model_with_windowed_layers_keeps_packed_documents_apart():
    """VAETKI's layout in miniature (latent attention, a window on all but every third layer, MoE): a row of packed
    documents gives each document the logits it gets alone."""
    cfg = mla_model_cfg(moe={}, sliding_window=4, layer_pattern="LLG", n_layers=3)
    model = Transformer(cfg).eval()
    model.init_weights(seed=0)
    lengths = [7, 1, 12]
    tokens = torch.randint(0, cfg.vocab_size, (1, sum(lengths)), generator=torch.Generator().manual_seed(0))
    cu = torch.tensor([0, 7, 8, 20])
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    with torch.no_grad():
        packed = model(tokens, positions, [cu])
        alone = torch.cat([model(part) for part in tokens.split(lengths, dim=1)], dim=1)
    assert (packed - alone).abs().max().item() < 1e-5
