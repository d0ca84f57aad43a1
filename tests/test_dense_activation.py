"""dense_activation: elementwise activations of channels_last CPU maps run on the dense
(B, H, W, C) view (where PyTorch's oneDNN GELU applies), with the plain activation's values,
layout and gradients, and no trace of it in a captured graph."""
from __future__ import annotations

import torch
import torch.nn as nn

from partialnet.models.backbone import Mlp
from partialnet.models.layers import dense_activation


class RecordingGELU(nn.GELU):
    """A GELU that records whether each input it gets is default-contiguous."""

    def __init__(self):
        super().__init__()
        self.saw_contiguous: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.saw_contiguous.append(x.is_contiguous())
        return super().forward(x)


def _cl(*shape) -> torch.Tensor:
    return torch.randn(*shape).contiguous(memory_format=torch.channels_last)


def test_channels_last_map_runs_on_the_dense_view_with_the_same_values_and_gradients():
    torch.manual_seed(0)
    act = RecordingGELU()
    x = _cl(2, 6, 5, 4).requires_grad_()
    out = dense_activation(act, x)
    assert act.saw_contiguous == [True]
    assert out.shape == x.shape and out.is_contiguous(memory_format=torch.channels_last)
    ref_x = x.detach().clone().requires_grad_()
    ref = nn.GELU()(ref_x)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    g = _cl(*out.shape)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x.grad, ref_x.grad, atol=1e-6, rtol=1e-5)


def test_other_inputs_are_passed_as_they_are():
    act = RecordingGELU()
    for x in (torch.randn(2, 6, 5, 4), _cl(2, 6, 1, 1), torch.randn(3, 7)):  # NCHW, 1x1 map, a matrix
        assert torch.equal(dense_activation(act, x), nn.GELU()(x))
    assert act.saw_contiguous == [True, True, True]
    strided = _cl(2, 8, 5, 4)[:, 2:]  # a channel slice: neither layout is dense
    one_image = _cl(1, 6, 5, 4)  # one image at inference keeps the generic kernel
    act.saw_contiguous.clear()
    torch.testing.assert_close(dense_activation(act, strided), nn.GELU()(strided))
    with torch.no_grad():
        torch.testing.assert_close(dense_activation(act, one_image), nn.GELU()(one_image))
    assert act.saw_contiguous == [False, False]
    dense_activation(act, one_image.requires_grad_())  # ... but not in training
    assert act.saw_contiguous == [False, False, True]


def test_in_place_overwrites_the_input_and_returns_it():
    for act in (nn.GELU(), nn.GELU(approximate="tanh"), nn.ReLU()):
        x = _cl(2, 6, 5, 4)
        expected = act(x.clone())
        with torch.no_grad():
            out = dense_activation(act, x, inplace=True)
        assert out is x
        torch.testing.assert_close(x, expected, atol=1e-6, rtol=1e-5)


def test_a_traced_graph_has_no_transposes():
    act = nn.GELU()
    graph = torch.jit.trace(lambda x: dense_activation(act, x), _cl(2, 6, 5, 4)).graph
    kinds = {node.kind() for node in graph.nodes()}
    assert "aten::gelu" in kinds and "aten::permute" not in kinds


def test_the_mlp_activation_takes_the_dense_view():
    mlp = Mlp(8, RecordingGELU).to(memory_format=torch.channels_last)
    mlp(_cl(2, 8, 6, 6))
    assert mlp.act.saw_contiguous == [True]
