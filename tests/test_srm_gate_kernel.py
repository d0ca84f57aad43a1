"""The srm_gate kernel: PAT_ch's SRM gate for one image at inference in one C++ call equals the
PyTorch-operator form (statistics over the token matrix, the SRM Linear, hardsigmoid), and fused
PartialNet takes it at batch 1."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import partialnet
import partialnet.deploy.fusion as fusion
from partialnet.deploy.fusion import FusedPATChannel, fuse
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
        got = cpu_kernels().srm_gate(t_u, w_mean, w_std, bias, eps)
        torch.testing.assert_close(got, _operator_gate(t_u, w_mean, w_std, bias, eps), rtol=1e-5, atol=1e-6)


def test_fused_partialnet_takes_the_kernel_at_batch_one(monkeypatch):
    torch.manual_seed(0)
    model = fuse(partialnet.create_model("partialnet_t0", num_classes=10).eval())
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    calls = []
    kernels = cpu_kernels()

    class Spy:
        def srm_gate(self, *args):
            calls.append(args[0].shape)
            return kernels.srm_gate(*args)

    with torch.inference_mode():
        monkeypatch.setattr(fusion, "cpu_kernels", lambda: Spy())
        got = model(x)
        monkeypatch.setattr(fusion, "cpu_kernels", lambda: None)
        want = model(x)
    n_pat_ch = sum(isinstance(m, FusedPATChannel) for m in model.modules())
    assert len(calls) == n_pat_ch > 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
