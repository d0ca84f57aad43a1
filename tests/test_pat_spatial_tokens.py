"""pat_spatial_tokens: PAT_sp's training forward/backward on the token matrix (C++ kernels) equals
the modules' (values, gradients, running statistics), and anything it does not cover runs the modules."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from conftest import randomize_batch_norm_

import partialnet.models.layers.pat_spatial_tokens as tokens
from partialnet.models.layers import PATSpatial
from partialnet.models.layers.pat_spatial_tokens import takes_token_form


HAS_AVX2 = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
needs_kernels = pytest.mark.skipif(not HAS_AVX2, reason="the token form's kernels need an AVX2 CPU")


def _module(dim: int, dtype=torch.float32, **norm_kwargs) -> PATSpatial:
    torch.manual_seed(0)
    m = PATSpatial(dim)
    if norm_kwargs:
        m.attn_norm = nn.BatchNorm2d(m.dim_attn, **norm_kwargs)
        m.conv_norm = nn.BatchNorm2d(m.dim_conv, **norm_kwargs)
    with torch.no_grad():  # logits spread over the gate's linear range and both saturated ends
        m.attn_conv.weight.normal_(0, 1.0)
    for bn in (m.attn_norm, m.conv_norm):
        randomize_batch_norm_(bn)
    return m.train().to(dtype=dtype, memory_format=torch.channels_last)


def _map(dim: int, dtype=torch.float32, seed: int = 1, channels_last: bool = True, offset: float = 0.3,
         scale: float = 1.5) -> torch.Tensor:
    x = torch.randn(3, dim, 5, 4, generator=torch.Generator().manual_seed(seed), dtype=dtype) * scale + offset
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _close(a: torch.Tensor, b: torch.Tensor, what: str, rel: float) -> None:
    err, scale = (a - b).abs().max().item(), b.abs().max().item()
    assert err <= rel * scale + 1e-12, f"{what}: max difference {err:.3g} at scale {scale:.3g}"


@needs_kernels
@pytest.mark.parametrize("dim", [12, 9, 40])  # 9: the attention half is the larger one; 40: 8-wide vectors and tails
@pytest.mark.parametrize("norm_kwargs", [{}, {"momentum": None}, {"track_running_stats": False}])
def test_token_form_equals_the_modules(dim, norm_kwargs):
    """The float32 token form against the modules run in float64 (the exact values, up to float64
    rounding) and in float32 (what training without the kernels computes)."""
    m = _module(dim, torch.float32, **norm_kwargs)
    ref64, ref32 = copy.deepcopy(m).double(), copy.deepcopy(m)
    for step in range(2):  # the second step reads the running statistics the first wrote
        x = _map(dim, torch.float32, seed=step)
        assert takes_token_form(m, x)
        xa, xb, xc = (x.clone().requires_grad_() for _ in range(3))
        ya, yb, yc = m(xa), ref64.forward_modules(xb.double()), ref32.forward_modules(xc)
        assert ya.is_contiguous(memory_format=torch.channels_last)
        g = torch.randn(ya.shape, generator=torch.Generator().manual_seed(5 + step))
        ya.backward(g)
        yb.backward(g.double())
        yc.backward(g)
        for ref, rel in ((yb, 2e-6), (yc, 2e-5)):
            _close(ya.double(), ref.double(), "output", rel)
        for got, want64, want32, what in [(xa.grad, xb.grad, xc.grad, "input gradient")] + [
                (p.grad, q.grad, r.grad, f"{name} gradient")
                for (name, p), q, r in zip(m.named_parameters(), ref64.parameters(), ref32.parameters())]:
            _close(got.double(), want64, what + " (float64 modules)", 2e-5)
            _close(got.double(), want32.double(), what + " (float32 modules)", 5e-5)
    for (name, buf), ref_buf in zip(m.named_buffers(), ref64.buffers()):
        _close(buf.double(), ref_buf.double(), name, 5e-6)  # float32 buffers against float64 ones


@needs_kernels
def test_statistics_of_a_channel_far_from_zero():
    """Channels whose mean is 1000 standard deviations from zero: batch norm's variance survives
    (the kernel sums around a shift; plain sums of squares would lose it to float rounding)."""
    m = _module(12)
    ref = copy.deepcopy(m).double()
    x = _map(12, offset=50.0, scale=0.05)
    torch.testing.assert_close(m(x).double(), ref.forward_modules(x.double()), rtol=1e-4, atol=1e-4)
    for buf, ref_buf in zip(m.buffers(), ref.buffers()):
        torch.testing.assert_close(buf.double(), ref_buf.double(), rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("case", ["eval", "nchw", "float64", "other_norm", "other_gate", "capture", "no_build"])
def test_other_inputs_run_the_modules(case, monkeypatch):
    m, x = _module(12), _map(12)
    if case == "eval":
        m.eval()
    elif case == "nchw":
        x = _map(12, channels_last=False)
    elif case == "other_norm":
        m.conv_norm = nn.Sequential(m.conv_norm)
    elif case == "other_gate":
        m.attn_gate = nn.Sigmoid()
    elif case == "float64":
        m, x = m.double(), x.double()
    elif case == "capture":
        monkeypatch.setattr(tokens, "is_capturing_graph", lambda: True)
    elif case == "no_build":
        monkeypatch.setattr(tokens, "cpu_kernels", lambda: None)
    assert not takes_token_form(m, x)
    ref = copy.deepcopy(m)
    torch.testing.assert_close(m(x), ref.forward_modules(x), rtol=0, atol=0)
