"""PointwiseConv2d: 1x1 convs run as one GEMM on the channels_last view on the CPU for one image
at inference and for small maps, with a Conv2d's outputs, gradients, state dict and exported graph."""
from __future__ import annotations

import torch
import torch.nn as nn

import partialnet
from partialnet.deploy import fuse
from partialnet.models.layers import PointwiseConv2d, is_pointwise


def _ops(fn) -> set[str]:
    with torch.profiler.profile() as prof:
        fn()
    return {e.key for e in prof.key_averages()}


def _cl(*shape) -> torch.Tensor:
    return torch.randn(*shape).contiguous(memory_format=torch.channels_last)


def test_gemm_path_equals_the_conv_and_is_taken_where_it_pays():
    """The GEMM runs for one image at inference and for small maps (<= 7x7) at any batch, with
    autograd too; larger maps with several images, autograd on a large map, and NCHW input take
    the conv. Outputs (and gradients) equal a plain Conv2d's."""
    torch.manual_seed(0)
    pw = PointwiseConv2d(24, 40)
    ref = nn.Conv2d(24, 40, 1)
    ref.load_state_dict(pw.state_dict())  # same keys and shapes as a Conv2d
    one_large, batch_large, batch_small = _cl(1, 24, 9, 8), _cl(3, 24, 9, 8), _cl(3, 24, 7, 5)
    with torch.no_grad():
        for x, gemm in ((one_large, True), (batch_large, False), (batch_small, True), (one_large.contiguous(), False)):
            out = pw(x)
            torch.testing.assert_close(out, ref(x), atol=1e-5, rtol=1e-5)
            ops = _ops(lambda: pw(x))
            assert ("aten::convolution" not in ops) == gemm, x.shape
            if gemm:
                assert "aten::linear" in ops and out.is_contiguous(memory_format=torch.channels_last)
    for x, gemm in ((batch_small, True), (one_large, False)):  # training: only small maps
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        assert ("aten::convolution" not in _ops(lambda: pw(xa))) == gemm
        g = _cl(*pw(xa).shape)
        pw(xa).backward(g)
        ref(xb).backward(g)
        torch.testing.assert_close(xa.grad, xb.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pw.weight.grad, ref.weight.grad, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(pw.bias.grad, ref.bias.grad, atol=1e-4, rtol=1e-5)


def test_training_models_use_it_for_their_1x1_convs():
    model = partialnet.create_model("partialnet_t0", num_classes=10)
    mlp = model.stages[0].blocks[0].mlp
    assert isinstance(mlp.fc1, PointwiseConv2d) and isinstance(mlp.fc2, PointwiseConv2d)
    assert isinstance(model.conv_head, PointwiseConv2d)
    assert isinstance(mlp.pat_sp.conv, PointwiseConv2d) and isinstance(mlp.pat_sp.attn_conv, PointwiseConv2d)


def test_fused_model_uses_it_for_every_1x1_conv():
    fused = fuse(partialnet.create_model("partialnet_t0", num_classes=10).eval())
    convs = [m for m in fused.modules() if isinstance(m, nn.Conv2d)]
    pointwise = [m for m in convs if is_pointwise(m)]
    assert pointwise and all(isinstance(m, PointwiseConv2d) for m in pointwise)
    assert not any(isinstance(m, PointwiseConv2d) for m in convs if not is_pointwise(m))
