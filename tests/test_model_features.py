"""Model options against `transformers` (logits), packed documents, attention backends, FLOPs, bad configs."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from kfm.model import ModelConfig, Transformer
from kfm.model.accounting import flops_per_token, num_params
from kfm.model.attention import Documents, attention, attention_mask
from kfm.model.config import ModelRuntime
from kfm.model.kernels.linear_cross_entropy import linear_cross_entropy, linear_cross_entropy_reference
from kfm.model.loss import cross_entropy_loss
from kfm.train.hf.convert import hf_architecture, to_hf_config, to_hf_state_dict
from tests.helpers import BASE, KERNEL_DEVICE, VARIANTS, reference_attention

ARCH = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
        "exaone4": "Exaone4ForCausalLM"}


def build(cfg: ModelConfig, seed: int = 0) -> Transformer:
    m = Transformer(cfg)
    m.init_weights(seed=seed)
    with torch.no_grad():  # norms and biases off their init values, so the comparison sees them
        g = torch.Generator().manual_seed(seed + 1)
        for name, p in m.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    return m.eval()


@pytest.mark.parametrize("name", VARIANTS)
def test_logits_equal_the_stock_transformers_class(name):
    from transformers import AutoModelForCausalLM

    cfg = ModelConfig(**{**BASE, **VARIANTS[name]})
    assert hf_architecture(cfg) == ARCH[name.split("_")[0]]
    ours = build(cfg)
    hf_cfg = to_hf_config(cfg)
    hf_cfg._attn_implementation = "eager"
    hf = AutoModelForCausalLM.from_config(hf_cfg).eval()
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(ours.state_dict(), cfg), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    assert sum(p.numel() for p in hf.parameters()) == sum(p.numel() for p in ours.parameters()) == num_params(cfg)
    tokens = torch.randint(0, cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (ours(tokens) - hf(tokens).logits).abs().max().item()
    assert diff < 1e-4, diff


@pytest.mark.parametrize("name", ["llama", "exaone4_hybrid", "qwen3_qknorm_headdim"])
def test_packed_documents_equal_separate_runs(name):
    cfg = ModelConfig(**{**BASE, **VARIANTS[name]})
    m = build(cfg)
    g = torch.Generator().manual_seed(1)
    layouts = [[5, 11, 1, 7], [24]]
    tokens = torch.randint(0, cfg.vocab_size, (2, 24), generator=g)
    cu = [torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()]) for lens in layouts]
    positions = torch.stack([torch.cat([torch.arange(n) for n in lens]) for lens in layouts])
    with torch.no_grad():
        packed = m(tokens, positions, cu)
        for row, lens in enumerate(layouts):
            start = 0
            for n in lens:
                alone = m(tokens[row : row + 1, start : start + n])
                assert (packed[row, start : start + n] - alone[0]).abs().max() < 1e-5
                start += n
        assert not torch.allclose(packed[0, 5:16], m(tokens[:1])[0, 5:16], atol=1e-3)  # the mask matters


def _qkv(batch, heads, kv_heads, seq, dim, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, h, seq, dim, generator=g).to(dtype) for h in (heads, kv_heads, kv_heads)]


@pytest.mark.parametrize("backend", ["sdpa", "flex", "triton", "auto"])
@pytest.mark.parametrize("window", [0, 5])
@pytest.mark.parametrize("with_docs", [False, True])
def test_attention_backends_agree(backend, window, with_docs):
    device = KERNEL_DEVICE if backend == "triton" else "cpu"  # compiled on a GPU, interpreted on CPU
    q, k, v = (t.to(device) for t in _qkv(2, 8, 2, 37, 16, torch.float32))
    docs = (Documents.from_cu_seqlens([torch.tensor([0, 10, 11, 37]), torch.tensor([0, 37])], 37, device)
            if with_docs else None)
    allowed = attention_mask(37, docs, window, device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FlexAttention warns that it runs uncompiled on CPU
        got = attention(q, k, v, docs, window, backend)
    assert (got - reference_attention(q, k, v, allowed)).abs().max() < 1e-5


def test_attention_mask_rule():
    docs = Documents.from_cu_seqlens([torch.tensor([0, 3, 8])], 8)
    allowed = attention_mask(8, docs, 2)[0, 0]
    for i in range(8):
        for j in range(8):
            same_doc = (i < 3) == (j < 3)
            assert bool(allowed[i, j]) == (j <= i and i - j < 2 and same_doc), (i, j)


def test_bad_cu_seqlens_and_unavailable_backend():
    with pytest.raises(ValueError, match="cu_seqlens of row 0 must rise strictly from 0 to the sequence length 8"):
        Documents.from_cu_seqlens([torch.tensor([0, 3, 3, 8])], 8)
    q, k, v = _qkv(1, 2, 2, 8, 16, torch.float32)
    with pytest.raises(RuntimeError, match="flash_attn"):
        attention(q, k, v, backend="flash_attn")


@pytest.mark.parametrize("name", ["llama", "qwen2_bias", "qwen3_qknorm_headdim", "exaone4_hybrid"])
def test_flops_match_the_flop_counter(name):
    cfg = ModelConfig(**{**BASE, **VARIANTS[name]})
    m = Transformer(cfg)
    m.init_weights(seed=0)
    tokens = torch.randint(0, cfg.vocab_size, (2, 48))
    # SDPA's math path runs attention as matrix products, which the counter sees forward and backward
    # (the backward of CPU's fused kernel is counted at half its products). Full score matrices, causal or not.
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as fwd:
            logits = m(tokens)
        with FlopCounterMode(display=False) as both:
            F.cross_entropy(m(tokens).flatten(0, 1), tokens.flatten()).backward()
    expected = flops_per_token(cfg, 48) * tokens.numel()
    assert logits.shape[-1] == cfg.vocab_size
    assert abs(fwd.get_total_flops() - expected) / expected < 0.01
    assert abs(both.get_total_flops() - 3 * expected) / (3 * expected) < 0.01
    assert flops_per_token(cfg, 48, causal=True) < expected


def test_z_loss():
    logits = torch.randn(2, 5, 11)
    targets = torch.randint(0, 11, (2, 5))
    targets[0, 0] = -100
    keep = targets.flatten() != -100
    z = torch.logsumexp(logits.flatten(0, 1)[keep], -1).pow(2).mean()
    plain = cross_entropy_loss(logits, targets)
    assert torch.allclose(cross_entropy_loss(logits, targets, z_loss=1e-2), plain + 1e-2 * z)


@pytest.mark.parametrize("bad, match", [
    (dict(dim=66), r"model.dim \(66\) must be divisible by model.n_heads \(4\)"),
    (dict(n_kv_heads=3), r"model.n_heads \(4\) must be a multiple of model.n_kv_heads \(3\)"),
    (dict(layer_pattern="LLLLG", sliding_window=4), r"layer_pattern 'LLLLG' is longer than model.n_layers \(4\)"),
    (dict(layer_pattern="LG"), "has local layers: set model.sliding_window"),
    (dict(layer_pattern="LX", sliding_window=4), "letters G"),
    (dict(norm_placement="sandwich"), "model.norm_placement"),
    (dict(rope=dict(scaling="ntk")), "model.rope.scaling must be one of"),
])
def test_bad_config_is_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**{**BASE, **bad})


def test_bad_runtime_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="model_runtime.attention_backend must be one of auto, flash_attn, triton, "
                                         "flex, sdpa, got 'xformers'"):
        ModelRuntime(attention_backend="xformers")
    with pytest.raises(ValueError, match="model_runtime.kernels must be one of auto, triton, torch"):
        ModelRuntime(kernels="cuda")


@pytest.mark.parametrize("features, match", [
    (dict(qkv_bias=True, qk_norm=True), "both qkv_bias and qk_norm"),
    (dict(sliding_window=4, layer_pattern="LG"), "sliding-window layers with pre-norm"),
    (dict(norm_placement="post"), "without qk_norm"),
])
def test_no_stock_architecture_names_the_feature(features, match):
    with pytest.raises(ValueError, match=match):
        hf_architecture(ModelConfig(**{**BASE, **features}))


def close_relative(got: torch.Tensor, ref: torch.Tensor, rtol: float) -> bool:
    """Largest error within ``rtol`` of the reference's largest magnitude (an absolute bound would pass any
    gradient when the gradients are small)."""
    return bool((got.float() - ref.float()).abs().max() <= rtol * ref.float().abs().max())


@pytest.mark.parametrize("n, vocab, dim, chunk", [(37, 101, 16, 8), (64, 50, 8, 64), (5, 7, 3, 2), (130, 257, 24, 128),
                                                 (20, 2500, 16, 8)])  # vocabulary over the kernel block
@pytest.mark.parametrize("z", [0.0, 1e-3])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("use_triton", [False, True])
def test_chunked_linear_cross_entropy_equals_reference(n, vocab, dim, chunk, z, dtype, tol, use_triton):
    """Loss within ``tol`` absolute; each gradient within ``tol`` of its own largest magnitude, a bound that a
    gradient 10% off fails (asserted below; the former absolute 2e-2 for bf16 was 22-84% of the largest
    gradient at three of these shapes)."""
    device = KERNEL_DEVICE if use_triton else "cpu"  # the Triton kernel compiled on a GPU, interpreted on CPU
    g = torch.Generator().manual_seed(n)
    h = torch.randn(n, dim, generator=g).to(device, dtype).requires_grad_()
    w = (torch.randn(vocab, dim, generator=g) / dim**0.5).to(device, dtype).requires_grad_()
    t = torch.randint(0, vocab, (n,), generator=g).to(device)
    t[::4] = -100
    got = linear_cross_entropy(h, w, t, z_loss=z, chunk=chunk, use_triton=use_triton)
    got.backward(torch.tensor(3.0, device=device))
    gh, gw = h.grad, w.grad
    h.grad = w.grad = None
    ref = linear_cross_entropy_reference(h.float(), w.float(), t, z_loss=z)
    ref.backward(torch.tensor(3.0, device=device))
    assert got.dtype == torch.float32 and abs(got.item() - ref.item()) < tol
    assert gh.dtype == dtype and close_relative(gh, h.grad, tol)
    assert gw.dtype == dtype and close_relative(gw, w.grad, tol)
    assert not close_relative(gh * 1.1, h.grad, tol) and not close_relative(gw * 1.1, w.grad, tol)


def test_model_loss_equals_logits_loss():
    cfg = ModelConfig(**{**BASE, **VARIANTS["qwen3_qknorm_headdim"]})
    m = build(cfg)
    tokens = torch.randint(0, cfg.vocab_size, (2, 20))
    targets = torch.randint(0, cfg.vocab_size, (2, 20))
    fused = m(tokens, targets=targets, z_loss=1e-4, loss_chunk=7)
    assert torch.allclose(fused, cross_entropy_loss(m(tokens), targets, z_loss=1e-4), atol=1e-5)


def fake_flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, causal=False, window_size=(-1, -1), **_):
    """flash-attn's documented varlen semantics in plain PyTorch: tokens (total, heads, dim), sequences cut at
    cu_seqlens, query i sees keys in [i - window_size[0], i + window_size[1]] (and <= i when causal)."""
    assert torch.equal(cu_q, cu_k) and cu_q.dtype == torch.int32 and max_q == max_k
    out = torch.empty_like(q)
    rep = q.shape[1] // k.shape[1]
    for lo, hi in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
        i = torch.arange(hi - lo)[:, None]
        j = torch.arange(hi - lo)[None, :]
        ok = (j <= i) if causal else torch.ones(hi - lo, hi - lo, dtype=torch.bool)
        if window_size[0] >= 0:
            ok = ok & (j >= i - window_size[0])
        qs, ks, vs = (x[lo:hi].transpose(0, 1) for x in (q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)))
        scores = (qs @ ks.transpose(-1, -2) / q.shape[-1] ** 0.5).masked_fill(~ok, float("-inf"))
        out[lo:hi] = (scores.softmax(-1) @ vs).transpose(0, 1)
    return out


@pytest.mark.parametrize("window", [0, 5])
@pytest.mark.parametrize("with_docs", [False, True])
def test_flash_attn_backend_passes_documents_and_window_as_flash_attn_expects(monkeypatch, window, with_docs):
    """No GPU here: flash-attn's kernel is replaced by its documented semantics, to check kfm's side of the call
    (flattening, cu_seqlens over the batch, window_size convention, GQA)."""
    import sys
    import types

    from kfm.model.attention import BACKENDS

    monkeypatch.setitem(sys.modules, "flash_attn", types.SimpleNamespace(
        flash_attn_varlen_func=fake_flash_attn_varlen_func))
    q, k, v = _qkv(2, 8, 2, 37, 16, torch.float32)
    docs = Documents.from_cu_seqlens([torch.tensor([0, 10, 11, 37]), torch.tensor([0, 37])], 37) if with_docs else None
    got = BACKENDS["flash_attn"](q, k, v, docs, window)
    assert (got - reference_attention(q, k, v, attention_mask(37, docs, window))).abs().max() < 1e-5


def test_triton_backend_on_cpu_needs_the_interpreter(monkeypatch):
    from kfm.model.attention import resolve_backend

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="attention_backend=triton needs CUDA tensors .* TRITON_INTERPRET=1"):
        resolve_backend("triton", torch.zeros(1, 1, 4, 16))
    with pytest.raises(RuntimeError, match="flash_attn needs CUDA fp16/bf16|flash-attn is not installed"):
        resolve_backend("flash_attn", torch.zeros(1, 1, 4, 16))
    assert resolve_backend("auto", torch.zeros(1, 1, 4, 16)) == "sdpa"


@pytest.mark.parametrize("flash_installed", [True, False])
def test_auto_attention_backend_chooses_by_the_features_in_use(monkeypatch, caplog, flash_installed):
    """On CUDA: one causal document -> SDPA (cuDNN; kfm's Triton kernel was 3.4x slower on an H100); packed
    documents or a window -> flash-attn varlen when installed, else kfm's Triton kernel (failed before: auto
    chose Triton for a single document)."""
    import logging
    from types import SimpleNamespace

    import kfm.model.attention as attn

    monkeypatch.setattr(attn, "flash_attn_available", lambda: flash_installed)
    monkeypatch.setattr(attn, "triton_available", lambda: True)
    if hasattr(attn, "_log_choice"):
        attn._log_choice.cache_clear()
    q = SimpleNamespace(is_cuda=True, dtype=torch.bfloat16, device=torch.device("cuda"))  # no GPU here
    docs = Documents.from_cu_seqlens([torch.tensor([0, 3, 8])], 8)
    packed = "flash_attn" if flash_installed else "triton"
    with caplog.at_level(logging.INFO, logger="kfm.model"):
        assert attn.resolve_backend("auto", q) == "sdpa"
        assert attn.resolve_backend("auto", q) == "sdpa"
        assert attn.resolve_backend("auto", q, docs) == packed
        assert attn.resolve_backend("auto", q, None, 4) == packed
    chosen = [r.getMessage() for r in caplog.records if "attention_backend=auto" in r.getMessage()]
    assert len(chosen) == 2 and "sdpa (one causal document per row)" in chosen[0] and packed in chosen[1]
    assert attn.resolve_backend("auto", torch.zeros(1, 1, 8, 16), docs) == "sdpa"  # CPU: explicit mask
