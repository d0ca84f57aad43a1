"""The one-image kernels (partialnet/kernels/one_image.cpp): PAT_ch's SRM gate (and the fc1 rows it
scales) and PAT_sp's attention half, each in one C++ call, equal the PyTorch-operator forms, and
fused PartialNet takes them at batch 1."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import partialnet
import partialnet.deploy.fusion as fusion
from partialnet.deploy.fusion import FusedBlock, FusedPATChannel, fuse
from partialnet.kernels import cpu_kernels
from partialnet.models.layers.srm_stats import token_mean_std

pytestmark = pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
                                reason="the kernels need an AVX2 CPU")


def _operator_gate(t_u, w_mean, w_std, bias, eps):
    mean, std = token_mean_std(t_u, eps)
    return F.hardsigmoid(torch.addmm(bias, mean, w_mean).addmm_(std, w_std))


@pytest.mark.parametrize("n,cu,row", [(49, 48, 64), (3136, 24, 32), (2, 5, 9), (196, 13, 13)])
def test_gate_equals_the_operator_form(n, cu, row):
    g = torch.Generator().manual_seed(n + cu)
    tokens = torch.randn(n, row, generator=g) * 3 + 1
    tokens[:, row - cu] = 0.25  # a constant channel: its std is the floor sqrt(eps)
    t_u = tokens[:, row - cu:]  # a column block with row stride `row`, as PAT_ch's untouched half
    w_mean, w_std = torch.randn(cu, cu, generator=g) * 0.3, torch.randn(cu, cu, generator=g) * 0.3
    bias = torch.randn(cu, generator=g)
    for eps in (1e-10, 0.5):
        want = _operator_gate(t_u, w_mean, w_std, bias, eps)
        torch.testing.assert_close(cpu_kernels().srm_gate(t_u, w_mean, w_std, bias, eps), want, rtol=1e-5, atol=1e-6)
        rows = torch.randn(cu, 11, generator=g)
        torch.testing.assert_close(cpu_kernels().srm_gated_rows(t_u, w_mean, w_std, bias, eps, rows), rows * want.t(),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n,c,ca,scaled", [(49, 64, 32, False), (196, 13, 7, True), (3, 20, 20, False)])
def test_pat_sp_finish_equals_the_operator_form(n, c, ca, scaled):
    g = torch.Generator().manual_seed(n + c)
    y = torch.randn(n, c, generator=g) * 2
    w, shift = torch.randn(ca, generator=g), torch.randn(ca, generator=g)
    scale = torch.rand(ca, generator=g) + 0.5 if scaled else torch.empty(0)
    y_a = y[:, :ca]
    want = y.clone()
    gate = F.hardsigmoid(y_a @ w)[:, None]  # logits spread over the linear range and both saturated ends
    want[:, :ca] = y_a * gate * (scale if scaled else 1.0) + shift
    cpu_kernels().pat_sp_finish_(y, w, shift, scale)
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)


def test_fused_partialnet_takes_the_kernels_at_batch_one(monkeypatch):
    torch.manual_seed(0)
    model = fuse(partialnet.create_model("partialnet_t0", num_classes=10).eval())
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    calls = []
    kernels = cpu_kernels()

    class Spy:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(kernels, name)

    with torch.inference_mode():
        monkeypatch.setattr(fusion, "cpu_kernels", lambda: Spy())
        got = model(x)
        monkeypatch.setattr(fusion, "cpu_kernels", lambda: None)
        want = model(x)
    n_pat_ch = sum(isinstance(m, FusedPATChannel) for m in model.modules())
    n_blocks = sum(isinstance(m, FusedBlock) for m in model.modules())
    assert calls.count("srm_gated_rows") == n_pat_ch > 0  # every PAT_ch block: the gate scales fc1's rows
    assert calls.count("pat_sp_finish_") == n_blocks  # every block's MLP ends in PAT_sp
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
