"""gated_batch_norm: PAT_ch's ``norm(X_u * g)`` from the SRM statistics equals batch norm on the
gated map (values, gradients, running statistics), and is batch norm itself outside training."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from conftest import randomize_batch_norm_

from partialnet.models.layers import PATChannel
from partialnet.models.layers.dense_grad import dense_grad
from partialnet.models.layers.gated_norm import gated_batch_norm
from partialnet.models.layers.srm_stats import srm_statistics


def plain_forward(pat: PATChannel, x: torch.Tensor) -> torch.Tensor:
    """PATChannel as written in the paper: batch norm on the gated map itself."""
    x_p, x_u = pat.split(x)
    return torch.cat((pat.conv(x_p), dense_grad(pat.norm(x_u * pat.channel_gate(x_u)))), dim=1)


def _module(dim: int, **norm_kwargs) -> PATChannel:
    torch.manual_seed(0)
    m = PATChannel(dim, 0.25)
    if norm_kwargs:
        m.norm = nn.BatchNorm2d(m.dim_untouched, **norm_kwargs)
    for bn in (m.norm, m.srm_norm):
        randomize_batch_norm_(bn)
    return m


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """Equal up to float64 rounding, relative to the tensor's largest entry. (In float64: with one
    sample, the gate's gradient is a small difference of large terms, which float32 rounding moves
    by a percent in either implementation.)"""
    err, scale = (a - b).abs().max().item(), b.abs().max().item()
    assert err <= 1e-9 * scale + 1e-12, f"{what}: max difference {err:.3g} at scale {scale:.3g}"


def _compare(m: PATChannel, x: torch.Tensor, steps: int = 2) -> None:
    m, x = m.double(), x.double()
    ref = copy.deepcopy(m)
    for _ in range(steps):  # twice: the second step reads the running statistics the first wrote
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = m(xa), plain_forward(ref, xb)
        _close(ya, yb, "output")
        g = torch.randn_like(ya)
        ya.backward(g)
        yb.backward(g)
        _close(xa.grad, xb.grad, "input gradient")
        for (name, p), q in zip(m.named_parameters(), ref.parameters()):
            _close(p.grad, q.grad, f"{name} gradient")
    for (name, b), c in zip(m.named_buffers(), ref.buffers()):
        _close(b.double(), c.double(), name)


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("shape", [(6, 32, 9, 7), (1, 16, 5, 5), (5, 16, 1, 1)])
def test_training_equals_batch_norm_on_the_gated_map(layout, shape):
    m = _module(shape[1]).train()
    # an offset and a spread per channel: the between-sample term of the variance matters
    x = torch.randn(*shape) * torch.linspace(0.5, 3, shape[1]).view(1, -1, 1, 1) + 2.0
    _compare(m, x.contiguous(memory_format=layout))


@pytest.mark.parametrize("norm_kwargs", [{"momentum": None}, {"track_running_stats": False}, {"affine": False}])
def test_batch_norm_options_are_kept(norm_kwargs):
    _compare(_module(24, **norm_kwargs).train(), torch.randn(4, 24, 6, 6) + 1.0, steps=3)


def test_eval_mode_is_batch_norm_itself():
    m = _module(32).eval()
    x = torch.randn(3, 32, 8, 8)
    x_u = m.split(x)[1]
    mean, std = srm_statistics(x_u, m.std_eps)
    gate = m.gate_from_statistics(mean, std)
    assert torch.equal(gated_batch_norm(m.norm, x_u, gate, mean, std), m.norm(x_u * gate))


def test_other_norm_types_and_one_value_per_channel_call_the_norm():
    class CountingBN(nn.BatchNorm2d):  # a subclass (e.g. SyncBatchNorm's role): its own forward runs
        calls = 0

        def forward(self, x):
            CountingBN.calls += 1
            return super().forward(x)

    x, gate = torch.randn(4, 8, 5, 5), torch.rand(4, 8, 1, 1)
    mean, std = srm_statistics(x, 1e-10)
    bn = CountingBN(8).train()
    assert torch.equal(gated_batch_norm(bn, x, gate, mean, std), nn.BatchNorm2d(8).train()(x * gate))
    assert CountingBN.calls == 1
    one = torch.randn(1, 8, 1, 1)
    m1, s1 = srm_statistics(one, 1e-10)
    with pytest.raises(ValueError, match="more than 1 value per channel"):  # batch norm's own error
        gated_batch_norm(nn.BatchNorm2d(8).train(), one, gate[:1], m1, s1)


def test_half_precision_input_keeps_its_dtype_under_autocast():
    """Under bf16 autocast the statistics are taken in float32 and the output keeps the input's
    dtype, as batch norm's does; values agree within bf16 rounding."""
    m = _module(32).train()
    ref = copy.deepcopy(m)
    x = (torch.randn(4, 32, 8, 8) + 1.0).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, y_ref = m(x), plain_forward(ref, x)
    assert y.dtype == y_ref.dtype == torch.bfloat16
    err = (y.float() - y_ref.float()).abs().max().item()
    assert err <= 2 ** -6 * y_ref.float().abs().max().item(), err
