import math

import pytest
import torch
import torch.nn.functional as F

from kfm.model import ModelConfig, Transformer
from kfm.model.accounting import num_params
from kfm.model.config import RopeConfig
from kfm.model.layers import RMSNorm
from kfm.model.rope import Rotary, apply_rope, rope_tables

CFG = ModelConfig(vocab_size=97, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden_dim=96, max_seq_len=64)


def build(cfg=CFG, seed=0):
    m = Transformer(cfg)
    m.init_weights(seed=seed)
    return m


def test_shapes_and_param_count():
    m = build()
    x = torch.randint(0, CFG.vocab_size, (3, 17))
    assert m(x).shape == (3, 17, CFG.vocab_size)
    assert sum(p.numel() for p in m.parameters()) == num_params(CFG)


def test_builds_on_meta_and_materialises():
    with torch.device("meta"):
        m = Transformer(CFG)
    m.to_empty(device="cpu")
    m.init_weights(seed=0)
    ref = build()
    for (k, a), b in zip(m.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k
    x = torch.randint(0, CFG.vocab_size, (1, 9))
    assert torch.equal(m(x), ref(x))


def test_causal():
    m = build()
    x = torch.randint(0, CFG.vocab_size, (2, 20))
    y = x.clone()
    y[:, 12:] = (y[:, 12:] + 1) % CFG.vocab_size
    assert torch.allclose(m(x)[:, :12], m(y)[:, :12], atol=1e-6)
    assert not torch.allclose(m(x)[:, 12:], m(y)[:, 12:])


def test_attention_matches_explicit_reference():
    m = build()
    attn = m.layers[0].attention
    x = torch.randn(2, 11, CFG.dim)
    cos, sin = m.rope_cos[:11], m.rope_sin[:11]
    q = attn.wq(x).view(2, 11, 4, 16).transpose(1, 2)
    k = attn.wk(x).view(2, 11, 2, 16).transpose(1, 2).repeat_interleave(2, dim=1)
    v = attn.wv(x).view(2, 11, 2, 16).transpose(1, 2).repeat_interleave(2, dim=1)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    scores = q @ k.transpose(-1, -2) / math.sqrt(16)
    scores = scores.masked_fill(torch.ones(11, 11, dtype=torch.bool).triu(1), float("-inf"))
    ref = attn.wo((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 11, 64))
    assert torch.allclose(attn(x, Rotary(m.rope_cos, m.rope_sin, None, 11)), ref, atol=1e-5)


def test_rope_is_a_rotation_with_relative_positions():
    cos, sin = rope_tables(16, 32, RopeConfig())
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    def dot(i, j):
        return (apply_rope(q, cos[i : i + 1], sin[i : i + 1]) * apply_rope(k, cos[j : j + 1], sin[j : j + 1])).sum()
    assert torch.allclose(dot(3, 1), dot(10, 8), atol=1e-5)
    assert torch.allclose(apply_rope(q, cos[5:6], sin[5:6]).norm(), q.norm(), atol=1e-5)


def test_rmsnorm_reference():
    """Normalised in fp32, rounded to bf16, scaled by the (fp32) weight, returned in the input's dtype."""
    n = RMSNorm(8, 1e-5)
    n.weight.data.uniform_()
    x = torch.randn(4, 8, dtype=torch.bfloat16)
    ref = (x.float() / (x.float().pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()).to(torch.bfloat16) * n.weight
    got = n(x)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, ref.to(torch.bfloat16))


def test_loss_falls_when_overfitting_one_batch():
    torch.manual_seed(0)
    m = build()
    x = torch.randint(0, CFG.vocab_size, (4, 33))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(m(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        losses.append(loss.item())
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert losses[-1] < 0.5 * losses[0]


def test_tied_embeddings_share_storage():
    m = build(ModelConfig(**{**CFG.__dict__, "tie_embeddings": True}))
    assert m.output.weight is m.tok_embeddings.weight


@pytest.mark.parametrize("bad, match", [
    (dict(dim=65), "divisible"), (dict(n_kv_heads=3), "multiple"), (dict(vocab_size=0), "positive"),
])
def test_config_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**{**CFG.__dict__, **bad})


def test_too_long_input_is_an_error():
    with pytest.raises(ValueError, match="max_seq_len"):
        build()(torch.zeros(1, 65, dtype=torch.long))
