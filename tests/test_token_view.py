"""token_view: the (H*W, C) token matrix of one channels_last image and its map view, both views
of the same memory; None wherever such a view does not exist or a graph is being captured."""
from __future__ import annotations

import pytest
import torch

from partialnet.models.layers.token_view import token_map, token_matrix


def _cl(*shape) -> torch.Tensor:
    return torch.randn(*shape).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("hw", [(5, 7), (1, 6), (6, 1), (1, 1)])
def test_token_matrix_is_a_view_of_the_map_and_its_channel_slices(hw):
    x = _cl(1, 10, *hw)
    rows = x.permute(0, 2, 3, 1).reshape(-1, 10)  # row-major positions, channels along the row
    t = token_matrix(x)
    assert t.shape == rows.shape and torch.equal(t, rows)
    assert t.data_ptr() == x.data_ptr()
    t_u = token_matrix(x[:, 4:])  # a channel slice: rows keep the full map's stride
    assert torch.equal(t_u, rows[:, 4:]) and t_u.data_ptr() == x[:, 4:].data_ptr()
    t_u.zero_()  # shares memory: writing through the view writes the map
    assert x[:, 4:].abs().sum() == 0 and x[:, :4].abs().sum() > 0


def test_token_matrix_none_where_no_view_exists():
    assert token_matrix(torch.randn(1, 6, 4, 5)) is None  # NCHW: positions are innermost
    assert token_matrix(_cl(2, 6, 4, 5)) is None  # two images
    assert token_matrix(_cl(1, 6, 4, 5)[:, :, :, 1:]) is None  # a column crop: rows are not evenly spaced
    assert token_matrix(torch.randn(6, 4, 5)) is None


def test_token_matrix_none_under_a_graph_capture():
    seen = []

    def probe(x):
        seen.append(token_matrix(x))
        return x * 2

    torch.jit.trace(probe, (_cl(1, 6, 4, 5),), check_trace=False)
    assert seen == [None]


def test_token_map_round_trip_and_layout():
    x = _cl(1, 9, 4, 3)
    t = token_matrix(x)
    back = token_map(t, 4, 3)
    assert torch.equal(back, x) and back.data_ptr() == x.data_ptr()
    assert back.is_contiguous(memory_format=torch.channels_last)
    m = torch.randn(12, 5)
    y = token_map(m, 3, 4)
    assert y.shape == (1, 5, 3, 4) and torch.equal(y.permute(0, 2, 3, 1).reshape(12, 5), m)
    wide = torch.randn(12, 8)[:, :5]  # rows of a wider matrix
    assert torch.equal(token_map(wide, 3, 4).permute(0, 2, 3, 1).reshape(12, 5), wide)
    with pytest.raises(ValueError, match="not an 4x4 map"):
        token_map(m, 4, 4)
    with pytest.raises(ValueError, match="strides"):
        token_map(m.t(), 1, 5)
