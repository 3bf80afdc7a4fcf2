"""Triton kernels against their PyTorch references (on CPU under TRITON_INTERPRET=1, set in conftest)."""

import pytest
import torch

from model.kernels.rms_norm import rms_norm, rms_norm_reference

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("shape", [(5, 123, 123), (1, 1, 64), (3, 7, 80), (2, 33, 128), (4, 2, 1000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_matches_reference_forward_and_backward(shape, dtype, with_residual):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g).to(dtype).requires_grad_()
    w = (torch.rand(shape[-1], generator=g) + 0.5).to(dtype).requires_grad_()
    r = torch.randn(shape, generator=g).to(dtype).requires_grad_() if with_residual else None
    dy = torch.randn(shape, generator=g).to(dtype)
    dsum = torch.randn(shape, generator=g).to(dtype) if with_residual else None

    def run(fn):
        for t in (x, w, r):
            if t is not None:
                t.grad = None
        y, s = fn(x, w, 1e-6, r)
        loss = (y.float() * dy.float()).sum() + ((s.float() * dsum.float()).sum() if with_residual else 0.0)
        loss.backward()
        return [y, s, x.grad, w.grad] + ([r.grad] if with_residual else [])

    got, ref = run(rms_norm), run(rms_norm_reference)
    tol = TOL[dtype]
    for name, a, b in zip(["y", "x+residual", "dx", "dw", "dresidual"], got, ref):
        assert a.dtype == b.dtype, name
        scale = max(1.0, b.float().abs().max().item())  # dw sums over rows: compare relative to its size
        assert (a.float() - b.float()).abs().max().item() <= tol * scale, name
