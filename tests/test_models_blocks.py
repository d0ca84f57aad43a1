"""Blocks: any width >= 4, any H x W >= 1, split semantics, bad ratios, batch-1 training."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from partialnet.errors import UserError
from partialnet.models.layers import (
    EuclideanRPE,
    PartialConv,
    PATChannel,
    PATSelf,
    PATSpatial,
    StatsBatchNorm2d,
    conv_channels,
    euclidean_bucket_index,
    heads_for,
    srm_statistics,
)


WIDTHS = [4, 5, 40, 48, 96, 144, 160]
SIZES = [(1, 1), (7, 7), (13, 9)]
BLOCKS = {
    "pconv": PartialConv,
    "pconv_slicing": lambda d: PartialConv(d, forward_type="slicing"),
    "pat_ch": PATChannel,
    "pat_sf": PATSelf,
    "pat_sp": PATSpatial,
}


@pytest.mark.parametrize("kind", list(BLOCKS))
@pytest.mark.parametrize("dim", WIDTHS)
def test_forward_backward_any_width_and_size(kind, dim):
    torch.manual_seed(0)
    block = BLOCKS[kind](dim).train()
    for h, w in SIZES:
        x = torch.randn(2, dim, h, w, requires_grad=True)
        y = block(x)
        assert y.shape == x.shape
        y.square().mean().backward()
        assert torch.isfinite(y).all() and torch.isfinite(x.grad).all(), (kind, dim, h, w)
        grads = [p.grad for p in block.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        block.zero_grad()


@pytest.mark.parametrize(
    "dim,ratio,c_p", [(40, 0.25, 10), (48, 0.25, 12), (30, 0.25, 8), (4, 0.25, 1), (160, 0.125, 20)]
)
def test_split_rounding(dim, ratio, c_p):
    assert conv_channels(dim, ratio) == c_p
    for cls in (PartialConv, PATChannel, PATSelf):
        m = cls(dim, ratio)
        assert (m.dim, m.ratio, m.dim_conv, m.dim_untouched) == (dim, ratio, c_p, dim - c_p)


@pytest.mark.parametrize("ratio", [0.01, 0.0, -0.25, 1.0, 1.5, 0.99, float("nan"), "0.25", True])
@pytest.mark.parametrize("cls", [PartialConv, PATChannel, PATSelf])
def test_bad_ratio_raises(cls, ratio):
    with pytest.raises(ValueError) as err:
        cls(40, ratio)
    assert isinstance(err.value, UserError)
    if isinstance(ratio, float) and ratio == ratio:
        msg = str(err.value)
        assert "width 40" in msg and f"{ratio:g}" in msg and "[0.025, 0.975]" in msg


def test_bad_ratio_message_example():
    with pytest.raises(UserError, match=r"^split ratio 0.01 is not realisable at width 40: it gives 0 conv channels; "
                       r"pick a ratio in \[0.025, 0.975\]$"):
        PartialConv(40, 0.01)


def test_pconv_identity_part_and_forms_agree():
    torch.manual_seed(0)
    m = PartialConv(40).eval()
    x = torch.randn(2, 40, 9, 7)
    x_before = x.clone()
    y_cat = m(x)
    m.forward_type = "slicing"
    with torch.no_grad():
        y_slice = m(x)
    assert torch.equal(x, x_before), "slicing must clone, not modify its input"
    torch.testing.assert_close(y_cat, y_slice)
    assert torch.equal(y_cat[:, 10:], x[:, 10:])
    torch.testing.assert_close(y_cat[:, :10], m.conv(x[:, :10]))
    with pytest.raises(UserError):
        m.forward_type = "inplace"


def test_pat_channel_semantics():
    torch.manual_seed(0)
    m = PATChannel(40).eval()
    for bn in (m.srm_norm, m.norm):  # non-trivial eval statistics
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    assert m.srm_conv.weight.shape == (30, 30, 1, 2) and m.srm_conv.bias is None
    x = torch.randn(2, 40, 6, 5)
    y = m(x)
    x_u = x[:, 10:]
    mean = x_u.mean((2, 3))
    std = x_u.flatten(2).var(-1, unbiased=True).clamp_min(m.std_eps).sqrt()
    u = torch.stack((mean, std), -1)  # (B, C_u, 2)
    z = torch.einsum("bck,ock->bo", u, m.srm_conv.weight[:, :, 0])
    z = (z - m.srm_norm.running_mean) / (m.srm_norm.running_var + m.srm_norm.eps).sqrt()
    z = z * m.srm_norm.weight + m.srm_norm.bias
    g = torch.clamp(z + 3, 0, 6) / 6
    torch.testing.assert_close(y[:, 10:], m.norm(x_u * g[:, :, None, None]))
    torch.testing.assert_close(y[:, :10], m.conv(x[:, :10]))


@pytest.mark.parametrize("hw", [(1, 1), (1, 3), (6, 5)])
def test_srm_statistics_values_and_gradient(hw):
    """The shared mean/std helper equals torch's unbiased std (var 0 at one position), and its
    hand-written backward equals autograd through the textbook formula, for both outputs."""
    torch.manual_seed(0)
    x = torch.randn(3, 7, *hw, dtype=torch.float64) * 2 + 1
    eps = 1e-10
    n = hw[0] * hw[1]
    var = x.flatten(2).var(-1, unbiased=True) if n > 1 else torch.zeros(3, 7, dtype=torch.float64)
    mean, std = srm_statistics(x, eps)
    torch.testing.assert_close(mean, x.mean((2, 3)))
    torch.testing.assert_close(std, var.clamp_min(eps).sqrt())
    kept = srm_statistics(x, eps, keepdim=True)  # the (B, C, 1, 1) form of the exported graphs
    assert all(k.shape == (3, 7, 1, 1) for k in kept)
    torch.testing.assert_close(kept[0].flatten(1), mean)
    torch.testing.assert_close(kept[1].flatten(1), std)
    w_mean, w_std = torch.randn(3, 7, dtype=torch.float64), torch.randn(3, 7, dtype=torch.float64)
    for use_mean, use_std in ((1, 1), (1, 0), (0, 1)):
        a = x.clone().requires_grad_(True)
        m_a, s_a = srm_statistics(a, eps)
        (use_mean * (m_a * w_mean).sum() + use_std * (s_a * w_std).sum()).backward()
        b = x.clone().requires_grad_(True)
        flat = b.flatten(2)
        v_b = flat.var(-1, unbiased=True) if n > 1 else flat.sum(-1) * 0
        (use_mean * (flat.mean(-1) * w_mean).sum() + use_std * (v_b.clamp_min(eps).sqrt() * w_std).sum()).backward()
        torch.testing.assert_close(a.grad, b.grad)
        assert (a.grad.abs().sum() > 0) == bool(use_mean or n > 1)  # one position: std is constant
    torch.autograd.gradcheck(lambda t: srm_statistics(t, eps), (x[:1, :3].clone().requires_grad_(True),))


@pytest.mark.parametrize("hw", [(1, 2), (5, 6)])
def test_srm_statistics_batch1_channel_slice(hw):
    """The inference form for one image with channels innermost (the channels_last slice a fused
    PAT_ch reads, a (n, C) token matrix) gives torch's mean and unbiased std, floor included,
    and leaves its input unchanged."""
    torch.manual_seed(0)
    full = (torch.randn(1, 12, *hw, dtype=torch.float64) * 3 + 2).contiguous(memory_format=torch.channels_last)
    full[:, 7] = 0.5  # a constant channel: std at the floor
    before = full.clone()
    x_u = full[:, 4:]
    assert x_u.stride(1) == 1 and not x_u.is_contiguous(memory_format=torch.channels_last)
    eps = 1e-10
    with torch.no_grad():
        mean, std = srm_statistics(x_u, eps)
    plain = x_u.contiguous()
    torch.testing.assert_close(mean, plain.mean((2, 3)))
    torch.testing.assert_close(std, plain.flatten(2).var(-1, unbiased=True).clamp_min(eps).sqrt())
    assert std[0, 3].item() == eps ** 0.5
    torch.testing.assert_close(full, before, rtol=0, atol=0)


@pytest.mark.parametrize("channels_last", [False, True])
def test_dense_grad_same_values_dense_gradient(channels_last):
    """dense_grad changes neither the forward value nor the gradient's numbers; the gradient that
    reaches the wrapped half of a split is dense (contiguous in NCHW or NHWC order)."""
    from partialnet.models.layers.dense_grad import dense_grad

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(4, 10, 5, 6).contiguous(memory_format=fmt).requires_grad_(True)
    w = torch.randn(4, 10, 5, 6)
    seen = {}
    grads = []
    for wrap in (False, True):
        x.grad = None
        x_p, x_u = torch.split(x, [3, 7], dim=1)
        y_u = x_u * 2.0
        y_u.register_hook(lambda g: seen.__setitem__(wrap, g))
        out = torch.cat((x_p, dense_grad(y_u) if wrap else y_u), dim=1)
        torch.testing.assert_close(out, torch.cat((x_p, x_u * 2.0), dim=1))
        (out * w).sum().backward()
        grads.append(x.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])
    def is_dense(g):
        return g.is_contiguous() or g.is_contiguous(memory_format=torch.channels_last)

    assert not is_dense(seen[False])  # a channel slice of the output gradient
    assert is_dense(seen[True])


def test_pat_channel_batch_one_train():
    """A train-mode batch of 1 gives one value per channel to the SRM BN: it uses running stats."""
    m = PATChannel(48).train()
    before = m.srm_norm.running_mean.clone()
    y = m(torch.randn(1, 48, 5, 5))
    y.sum().backward()
    assert torch.equal(m.srm_norm.running_mean, before)
    assert m.srm_norm.weight.grad is not None
    m(torch.randn(2, 48, 5, 5))  # a real batch updates them
    assert not torch.equal(m.srm_norm.running_mean, before)


def test_stats_batchnorm_matches_batchnorm():
    torch.manual_seed(0)
    a, b = StatsBatchNorm2d(8), nn.BatchNorm2d(8)
    x = torch.randn(4, 8, 1, 1)
    torch.testing.assert_close(a(x), b(x))
    torch.testing.assert_close(a.running_mean, b.running_mean)
    a.eval(), b.eval()
    torch.testing.assert_close(a(x[:1]), b(x[:1]))


def test_pat_spatial_semantics():
    torch.manual_seed(0)
    m = PATSpatial(48).eval()
    assert (m.dim_attn, m.dim_conv) == (24, 24)
    assert PATSpatial(5).dim_attn == 3
    x = torch.randn(2, 48, 4, 6)
    y = m(x)
    x_a, x_c = x[:, :24], x[:, 24:]
    gate = torch.clamp(m.attn_conv(x_a) + 3, 0, 6) / 6
    assert gate.shape == (2, 1, 4, 6)
    torch.testing.assert_close(y[:, :24], m.attn_norm(x_a * gate))
    torch.testing.assert_close(y[:, 24:], m.conv(m.conv_norm(x_c)))


def test_pat_self_semantics():
    torch.manual_seed(0)
    m = PATSelf(64).eval()
    assert (m.num_heads, m.head_dim) == (4, 12)
    assert m.qkv.bias is None and m.rpe.bias_table.shape == (4, 41)
    with torch.no_grad():
        m.rpe.bias_table.normal_()
    x = torch.randn(2, 64, 5, 3)
    y = m(x)
    torch.testing.assert_close(y[:, :16], m.conv(x[:, :16]))
    # reference MHSA written independently with nn.functional
    t = m.norm(x[:, 16:]).flatten(2).transpose(1, 2)
    q, k, v = (t @ m.qkv.weight.t()).chunk(3, dim=-1)
    heads = lambda z: z.reshape(2, 15, 4, 12).transpose(1, 2)  # noqa: E731
    bias = m.rpe.bias_table[:, euclidean_bucket_index(5, 3)]
    out = nn.functional.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=bias)
    out = m.proj(out.transpose(1, 2).reshape(2, 15, 48)).transpose(1, 2).reshape(2, 48, 5, 3)
    torch.testing.assert_close(y[:, 16:], out, atol=1e-5, rtol=1e-4)


def test_heads_at_non_divisible_widths():
    assert heads_for(30, 4) == 3  # width 40 at r = 1/4
    assert heads_for(31, 4) == 1
    assert heads_for(2, 4) == 2
    assert heads_for(192, 4) == 4
    m = PATSelf(40)
    assert (m.dim_untouched, m.num_heads, m.head_dim) == (30, 3, 10)
    assert m.rpe.bias_table.shape == (3, 41)


def test_rpe_buckets():
    idx = euclidean_bucket_index(3, 4)
    assert idx.shape == (12, 12) and idx.dtype == torch.long
    assert idx[0, 0] == 0 and idx[0, 1] == 1 and idx[0, 5] == 1  # (0,0)-(1,1): sqrt 2 -> 1
    assert idx[0, 11] == 4  # (0,0)-(2,3): sqrt 13 = 3.6 -> 4
    assert torch.equal(idx, idx.t())
    big = euclidean_bucket_index(1, 100)
    assert big.max() == 35 and big[0, 20] == 20 and big[0, 21] == 20  # exact to 20, then log-compressed
    rpe = EuclideanRPE(2)
    assert rpe(7, 7).shape == (2, 49, 49) and rpe(2, 3).shape == (2, 6, 6)
    assert set(rpe._index_cache) == {(7, 7, "cpu"), (2, 3, "cpu")}
    assert "_index_cache" not in str(list(rpe.state_dict()))
    assert EuclideanRPE(2)._index_cache == {}, "the cache belongs to one instance"


def test_deploy_names():
    sp = PATSpatial(32)
    for name in ("attn_conv", "attn_norm", "conv_norm", "conv"):
        assert isinstance(getattr(sp, name), nn.Module)
    ch = PATChannel(32)
    for name in ("conv", "srm_conv", "srm_norm", "norm"):
        assert isinstance(getattr(ch, name), nn.Module)


def test_srm_statistics_constant_channel_has_finite_gradient():
    """A constant channel has variance 0: the floor keeps its std's gradient finite (zero),
    while the other channels keep torch's exact unbiased std."""
    x = torch.randn(2, 3, 4, 4)
    x[:, 1] = 0.5
    x.requires_grad_(True)
    mean, std = srm_statistics(x, PATChannel.std_eps)
    std.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad[:, 1].abs().max() == 0
    torch.testing.assert_close(std[:, [0, 2]], x.detach()[:, [0, 2]].flatten(2).std(-1), rtol=1e-6, atol=0)
