"""pat_spatial_tokens: PAT_sp's training forward/backward on the token matrix equals the modules'
(values, gradients, running statistics; float64 gradients also against finite differences), and
anything it does not cover runs the modules."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from partialnet.models.layers import PATSpatial
from partialnet.models.layers.pat_spatial_tokens import takes_token_form


def _module(dim: int, dtype=torch.float64, **norm_kwargs) -> PATSpatial:
    torch.manual_seed(0)
    m = PATSpatial(dim)
    if norm_kwargs:
        m.attn_norm = nn.BatchNorm2d(m.dim_attn, **norm_kwargs)
        m.conv_norm = nn.BatchNorm2d(m.dim_conv, **norm_kwargs)
    with torch.no_grad():  # logits spread over the gate's linear range and both saturated ends
        m.attn_conv.weight.normal_(0, 1.0)
        for bn in (m.attn_norm, m.conv_norm):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
            if bn.running_mean is not None:
                bn.running_mean.uniform_(-0.2, 0.2)
                bn.running_var.uniform_(0.5, 2.0)
    return m.train().to(dtype=dtype, memory_format=torch.channels_last)


def _map(dim: int, dtype=torch.float64, seed: int = 1, channels_last: bool = True) -> torch.Tensor:
    x = torch.randn(3, dim, 5, 4, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 1.5 + 0.3
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _close(a: torch.Tensor, b: torch.Tensor, what: str, rel: float) -> None:
    err, scale = (a - b).abs().max().item(), b.abs().max().item()
    assert err <= rel * scale + 1e-12, f"{what}: max difference {err:.3g} at scale {scale:.3g}"


@pytest.mark.parametrize("dim", [12, 9])  # 9: the attention half is the larger one
@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-6), (torch.float32, 2e-5)])
@pytest.mark.parametrize("norm_kwargs", [{}, {"momentum": None}, {"track_running_stats": False}])
def test_token_form_equals_the_modules(dim, dtype, rel, norm_kwargs):
    """(1e-6 in float64: the modules' own float64 gradient of the gate weight is off by about 3e-8
    relative from finite differences; the token form is checked against those in the next test.)"""
    m = _module(dim, dtype, **norm_kwargs)
    ref = copy.deepcopy(m)
    for step in range(2):  # the second step reads the running statistics the first wrote
        x = _map(dim, dtype, seed=step)
        assert takes_token_form(m, x)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = m(xa), ref.forward_modules(xb)
        assert ya.is_contiguous(memory_format=torch.channels_last)
        _close(ya, yb, "output", rel)
        g = torch.randn(ya.shape, generator=torch.Generator().manual_seed(5 + step), dtype=dtype)
        ya.backward(g)
        yb.backward(g)
        _close(xa.grad, xb.grad, "input gradient", rel)
        for (name, p), q in zip(m.named_parameters(), ref.parameters()):
            _close(p.grad, q.grad, f"{name} gradient", rel)
    for (name, buf), ref_buf in zip(m.named_buffers(), ref.buffers()):
        _close(buf.double(), ref_buf.double(), name, 1e-6)


def test_gradients_match_finite_differences():
    m = _module(10)
    x = _map(10).requires_grad_()
    names = [n for n, _ in m.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in m.parameters())

    def f(x, *ps):
        return torch.func.functional_call(m, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params), atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("case", ["eval", "nchw", "other_norm", "other_gate", "capture"])
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
    elif case == "capture":
        import partialnet.models.layers.pat_spatial_tokens as tokens
        monkeypatch.setattr(tokens, "is_capturing_graph", lambda: True)
    assert not takes_token_form(m, x)
    ref = copy.deepcopy(m)
    torch.testing.assert_close(m(x), ref.forward_modules(x), rtol=0, atol=0)
