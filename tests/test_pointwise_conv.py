"""PointwiseConv2d: the fused models' 1x1 convs run as one GEMM on the channels_last view at
inference on CPU, with a Conv2d's outputs, state dict and exported graph."""
from __future__ import annotations

import torch
import torch.nn as nn

import partialnet
from partialnet.deploy import fuse
from partialnet.deploy.pointwise_conv import PointwiseConv2d, is_pointwise


def _ops(fn) -> set[str]:
    with torch.profiler.profile() as prof:
        fn()
    return {e.key for e in prof.key_averages()}


def test_gemm_path_equals_the_conv_and_is_taken():
    torch.manual_seed(0)
    pw = PointwiseConv2d(24, 40).eval()
    ref = nn.Conv2d(24, 40, 1).eval()
    ref.load_state_dict(pw.state_dict())  # same keys and shapes as a Conv2d
    x = torch.randn(1, 24, 7, 5).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out, want = pw(x), ref(x)
        ops = _ops(lambda: pw(x))
    assert torch.allclose(out, want, atol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert "aten::linear" in ops and "aten::convolution" not in ops
    # batches, autograd and NCHW input take the Conv2d forward
    batch = torch.randn(2, 24, 7, 5).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.allclose(pw(batch), ref(batch), atol=1e-5)
        assert "aten::convolution" in _ops(lambda: pw(batch))
    assert "aten::convolution" in _ops(lambda: pw(x.contiguous()))
    assert "aten::convolution" in _ops(lambda: pw(x.requires_grad_()))


def test_fused_model_uses_it_for_every_1x1_conv():
    fused = fuse(partialnet.create_model("partialnet_t0", num_classes=10).eval())
    convs = [m for m in fused.modules() if isinstance(m, nn.Conv2d)]
    pointwise = [m for m in convs if is_pointwise(m)]
    assert pointwise and all(isinstance(m, PointwiseConv2d) for m in pointwise)
    assert not any(isinstance(m, PointwiseConv2d) for m in convs if not is_pointwise(m))
