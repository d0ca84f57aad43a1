"""Relative-position buckets (iRPE's piecewise index, ratio 20) and loading of the earlier 81-bucket tables."""
from __future__ import annotations

import math

import pytest
import torch

import partialnet
from partialnet.models.layers.rpe import EuclideanRPE, euclidean_bucket_index


def _reference_buckets(h: int, w: int) -> torch.Tensor:
    """Written from the formula: d = round(euclidean distance); d if d <= 20, else
    min(round(20 + ln(d / 20) / ln 8 * 20), 40)."""
    def bucket(dy: int, dx: int) -> int:
        d = round(math.hypot(dy, dx))
        return d if d <= 20 else min(round(20 + math.log(d / 20) / math.log(8) * 20), 40)

    by_offset = torch.tensor([[bucket(dy, dx) for dx in range(w)] for dy in range(h)])
    ys, xs = torch.arange(h).repeat_interleave(w), torch.arange(w).repeat(h)  # row-major tokens
    return by_offset[(ys[:, None] - ys[None]).abs(), (xs[:, None] - xs[None]).abs()]


@pytest.mark.parametrize("hw", [(25, 25), (7, 7), (3, 40)])
def test_buckets_match_the_formula(hw):
    got = euclidean_bucket_index(*hw)
    assert torch.equal(got, _reference_buckets(*hw))


def test_bucket_properties_at_a_large_map():
    idx = euclidean_bucket_index(25, 25)  # an 800 px input's stage-4 map
    assert idx.min() == 0 and idx.max() == round(20 + math.log(34 / 20) / math.log(8) * 20)  # d = 34 corner
    old = torch.cdist(*(2 * [torch.cartesian_prod(torch.arange(25.), torch.arange(25.))])).round().long()
    assert (idx != old).float().mean() > 0.13, "beyond distance 20 (13 % of the pairs) buckets are log-compressed"
    assert torch.equal(idx[old <= 20], old[old <= 20]), "exact up to 20"


def _old_bias(table: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The earlier lookup: column min(round(d), 80) of an [heads, 81] table."""
    pos = torch.cartesian_prod(torch.arange(float(h)), torch.arange(float(w)))
    return table[:, torch.cdist(pos, pos).round().long().clamp(max=80)]


def test_old_81_bucket_tables_still_load():
    old = torch.randn(4, 81, generator=torch.Generator().manual_seed(0))
    rpe = EuclideanRPE(4)
    with pytest.warns(UserWarning, match="81-bucket layout"):
        rpe.load_state_dict({"bias_table": old})
    assert rpe.bias_table.shape == (4, 41)
    for hw in [(7, 7), (15, 15), (4, 15)]:  # every distance <= 20: unchanged
        torch.testing.assert_close(rpe(*hw), _old_bias(old, *hw))
    assert not torch.allclose(rpe(16, 16), _old_bias(old, 16, 16))  # distance 21 shares bucket 20 now


def test_old_model_state_dict_loads_into_a_model():
    model = partialnet.create_model("partialnet_t0").eval()
    sd = model.state_dict()
    keys = [k for k in sd if k.endswith("rpe.bias_table")]
    assert len(keys) == 2
    for k in keys:
        sd[k] = torch.randn(4, 81)
    with pytest.warns(UserWarning, match="81-bucket"):
        model.load_state_dict(sd)
    assert model.stages[3].blocks[0].mixer.rpe.bias_table.shape == (4, 41)


def test_old_file_through_the_timm_route(tmp_path):
    import timm

    model = partialnet.create_model("partialnet_t0").eval()
    sd = model.state_dict()
    old = torch.randn(4, 81)
    for k in [k for k in sd if k.endswith("rpe.bias_table")]:
        sd[k] = old
    path = tmp_path / "old.pth"
    torch.save(sd, path)
    with pytest.warns(UserWarning, match="81-bucket"):
        loaded = timm.create_model("partialnet_t0", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(loaded.stages[3].blocks[1].mixer.rpe(15, 15), _old_bias(old, 15, 15))
