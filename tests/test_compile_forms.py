"""The forms the fused modules trace for ``torch.compile`` (runtime=compile): PAT_ch split into its
halves, PAT_sp's gate as a channel reduction, 1x1 convs as GEMMs at batch 1, no in-place slice
writes; exported graphs (ONNX, ``torch.export``) keep the plain forms. The same arithmetic as the
model, checked eagerly with the compile switch forced on, in a captured graph, and (slow) through
inductor with frozen weights and its C++ wrapper."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import partialnet
from partialnet.deploy import fuse, fusion, set_forward_type
from partialnet.deploy.fusion import FusedMlp
from partialnet.measure.runtimes import check_runner, make_runner
from partialnet.models.layers import PointwiseConv2d
from partialnet.utils.graph_capture import is_capturing_graph, is_torch_compiling
from test_deploy import build

TOL = 1e-4


def _graph_of(module: nn.Module, x: torch.Tensor) -> tuple[torch.fx.GraphModule, torch.Tensor]:
    """The FX graph dynamo captures for ``module(x)`` under inference mode, as runtime=compile runs it
    (no compiler runs), and the output of running that graph. ``fullgraph``: one graph, no graph
    break (each would be a round trip through Python on every forward)."""
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    with torch.inference_mode():
        out = torch.compile(module, backend=record, fullgraph=True)(x)
    torch._dynamo.reset()
    assert len(graphs) == 1
    return graphs[0], out


def _conv_weight_shapes(gm: torch.fx.GraphModule) -> list[tuple[int, ...]]:
    shapes = []
    for node in gm.graph.nodes:
        if node.op == "call_function" and getattr(node.target, "__name__", "") == "conv2d":
            shapes.append(tuple(node.args[1].meta["example_value"].shape))
    return shapes


def _method_calls(gm: torch.fx.GraphModule) -> set[str]:
    return {node.target for node in gm.graph.nodes if node.op == "call_method"}


def test_only_torch_compile_counts_as_torch_compiling():
    assert not is_torch_compiling() and not is_capturing_graph()
    seen = {}

    def probe(x):
        seen["compile"] = (is_torch_compiling(), is_capturing_graph())
        return x + 1

    torch._dynamo.reset()
    torch.compile(probe, backend="eager")(torch.zeros(2))

    class Probe(nn.Module):
        def __init__(self, key):
            super().__init__()
            self.key = key

        def forward(self, x):
            seen[self.key] = (is_torch_compiling(), is_capturing_graph())
            return x + 1

    torch.export.export(Probe("export"), (torch.zeros(2),))
    torch.jit.trace(Probe("trace"), torch.zeros(2), check_trace=False)
    torch._dynamo.reset()
    assert seen == {"compile": (True, True), "export": (False, True), "trace": (False, True)}


@pytest.mark.parametrize("zero_bn_scale", [False, True])
def test_compile_forms_match_the_model(monkeypatch, zero_bn_scale):
    """Eagerly, with the compile switch on: the split PAT_ch and the reduction gate of PAT_sp (also
    with a PAT_sp BN scale of 0, kept as a separate attn_scale) give the model's outputs."""
    model = build("partialnet_t0", seed=3)
    if zero_bn_scale:
        with torch.no_grad():
            model.stages[1].blocks[0].mlp.pat_sp.attn_norm.weight[2] = 0.0
    fused = set_forward_type(fuse(model), "split_cat")  # the out-of-place forms a capture traces
    assert any(m.attn_scale is not None for m in fused.modules() if isinstance(m, FusedMlp)) == zero_bn_scale
    monkeypatch.setattr(fusion, "is_torch_compiling", lambda: True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (fused(x) - model(x)).abs().max().item() <= TOL


@pytest.mark.parametrize("name", ["partialnet_t0", "fasternet_t0"])
def test_torch_compile_traces_the_inductor_forms(name):
    """Under torch.compile at batch 1: no one-output-channel conv (PAT_sp's gate is a reduction), no
    zero-padded full-width weights built in the graph (PAT_ch is split), no 1x1 conv (GEMMs), no
    slice write (PConv and the residuals out of place); same outputs as eager."""
    model = build(name, seed=1)
    fused = fuse(model)
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    gm, out = _graph_of(fused, x)
    shapes = _conv_weight_shapes(gm)
    assert shapes and all(s[0] > 1 for s in shapes), shapes
    assert all(s[2:] != (1, 1) for s in shapes), [s for s in shapes if s[2:] == (1, 1)]
    assert not _method_calls(gm) & {"new_zeros", "new_ones", "__setitem__", "add_", "copy_"}, _method_calls(gm)
    calls = {getattr(n.target, "__name__", str(n.target)) for n in gm.graph.nodes if n.op == "call_function"}
    assert not calls & {"setitem", "zeros_like", "ones_like", "add_"}, calls
    with torch.no_grad():
        assert (out - model(x)).abs().max().item() <= TOL


def test_export_keeps_the_plain_forms():
    """torch.export (and so an exporter) sees the export forms: the full-width PAT_ch and PAT_sp's
    gate as a one-output-channel conv, and every PointwiseConv2d as a conv (not its GEMM form)."""
    fused = fuse(build("partialnet_t0", seed=1))
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        gm = torch.export.export(fused, (x,)).module()
    weights = []
    for node in gm.graph.nodes:
        if node.op == "call_function" and "conv2d" in str(node.target):
            weights.append(tuple(node.args[1].meta["val"].shape))
    pointwise = sum(isinstance(m, PointwiseConv2d) for m in fused.modules())
    assert any(w[0] == 1 for w in weights), weights
    assert sum(w[2:] == (1, 1) and w[0] > 1 for w in weights) == pointwise, weights


@pytest.mark.slow
@pytest.mark.parametrize("name", ["partialnet_t0", "fasternet_t0"])
def test_compile_runtime_reproduces_the_model(name):
    """runtime=compile on the CPU (frozen weights, C++ wrapper) compiles the fused model and gives its
    outputs at batch 1 and 3 (inductor's freezing fails on in-place slice writes feeding a conv)."""
    model = build(name, seed=2)
    runner = make_runner("compile", fuse(model), 32)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32)
        assert check_runner(runner, model, x, "compile") <= TOL
    torch._dynamo.reset()
