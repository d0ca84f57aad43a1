"""SCConv (SRU + CRU) and ACmix: shapes, gradients, paper semantics, odd widths and sizes."""
import math

import pytest
import torch
import torch.nn as nn

from partialnet.models.layers.acmix import ACmix, _coords
from partialnet.models.layers.scconv import CRU, SRU, SCConv

WIDTHS = (40, 48, 96, 144, 160)
SIZES = ((1, 1), (7, 7), (13, 9), (32, 32))


def _out_size(hw, stride):
    conv = nn.Conv2d(1, 1, 3, stride, 1)
    return tuple(conv(torch.zeros(1, 1, *hw)).shape[-2:])


# ---------------------------------------------------------------- SCConv


@pytest.mark.parametrize("stride", (1, 2))
@pytest.mark.parametrize("hw", SIZES)
@pytest.mark.parametrize("dim", WIDTHS)
def test_scconv_forward_backward(dim, hw, stride):
    torch.manual_seed(0)
    m = SCConv(dim, stride=stride)
    x = torch.randn(2, dim, *hw, requires_grad=True)
    y = m(x)
    assert y.shape == (2, dim, *_out_size(hw, stride))
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # the straight-through gate lets the SRU's GroupNorm train
    assert m.sru.gn.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("dim", (6, 7, 40))
def test_sru_hard_gate_and_cross_reconstruction(dim):
    torch.manual_seed(0)
    sru = SRU(dim, gn_groups=16)
    with torch.no_grad():  # non-trivial GroupNorm affine
        sru.gn.weight.uniform_(0.5, 1.5)
        sru.gn.bias.normal_()
    x = torch.randn(2, dim, 5, 4)
    w1, w2 = sru.gates(x)
    assert set(w1.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(w1 + w2, torch.ones_like(w1))
    # Eq. 3: W1 = 1[sigmoid(W_gamma * GN(x)) > 0.5] with W_gamma = gamma / sum(gamma)
    wg = (sru.gn.weight / sru.gn.weight.sum()).view(1, -1, 1, 1)
    torch.testing.assert_close(w1, (torch.sigmoid(wg * sru.gn(x)) > 0.5).float())
    x1, x2 = w1 * x, w2 * x
    h = dim // 2
    mid = [x[:, h:h + 1]] if dim % 2 else []  # odd width: middle channel passes through
    expected = torch.cat([x1[:, :h] + x2[:, dim - h:], *mid, x2[:, :h] + x1[:, dim - h:]], dim=1)
    torch.testing.assert_close(sru(x), expected)
    assert sru.gn.num_groups == math.gcd(dim, 16)


def test_cru_params_and_fusion():
    dim = 64
    cru = CRU(dim)  # alpha 1/2, r 2, g 2, k 3
    # squeeze 2 * (32 * 16) + GWC 16/2 * 64 * 9 + PWC1 16 * 64 + PWC2 16 * 48 = 29 C^2 / 16
    assert sum(p.numel() for p in cru.parameters()) == 29 * dim * dim // 16
    assert cru.gwc.groups == 2 and cru.gwc.kernel_size == (3, 3)
    x = torch.randn(2, dim, 6, 6)
    up, low = cru.squeeze_up(x[:, :32]), cru.squeeze_low(x[:, 32:])
    y1 = cru.gwc(up) + cru.pwc1(up)
    y2 = torch.cat([cru.pwc2(low), low], 1)
    s1, s2 = y1.mean((2, 3), keepdim=True), y2.mean((2, 3), keepdim=True)
    b1 = s1.exp() / (s1.exp() + s2.exp())  # per-channel pairwise softmax
    torch.testing.assert_close(cru(x), b1 * y1 + (1 - b1) * y2)


def test_scconv_is_about_a_fifth_of_a_conv():
    """Paper Eq. 11: SCConv has roughly P_conv / 5 parameters at the defaults."""
    dim = 256
    ratio = sum(p.numel() for p in SCConv(dim).parameters()) / (9 * dim * dim)
    assert 0.18 < ratio < 0.22


@pytest.mark.parametrize("dim", (2, 3, 5))
def test_scconv_tiny_widths(dim):
    y = SCConv(dim)(torch.randn(2, dim, 4, 4))
    assert y.shape == (2, dim, 4, 4)


def test_scconv_stride_pools_first():
    m = SCConv(8, stride=2)
    assert isinstance(m.pool, nn.AvgPool2d)
    x = torch.randn(1, 8, 5, 5)
    torch.testing.assert_close(m(x), m.cru(m.sru(nn.functional.avg_pool2d(x, 2, ceil_mode=True))))


# ---------------------------------------------------------------- ACmix


@pytest.mark.parametrize("stride", (1, 2))
@pytest.mark.parametrize("hw", SIZES)
@pytest.mark.parametrize("dim", WIDTHS)
def test_acmix_forward_backward(dim, hw, stride):
    torch.manual_seed(0)
    m = ACmix(dim, dim, stride=stride, gate=(dim == 48))
    x = torch.randn(2, dim, *hw, requires_grad=True)
    y = m(x)
    assert y.shape == (2, dim, *_out_size(hw, stride))
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_acmix_in_out_differ():
    y = ACmix(24, 40, stride=2)(torch.randn(2, 24, 9, 9))
    assert y.shape == (2, 40, 5, 5)


def _reference_attention(m: ACmix, x: torch.Tensor) -> torch.Tensor:
    """Per-pixel loops: reflected window if it fits, else only in-image positions."""
    q, k, v = m.q(x), m.k(x), m.v(x)
    b_, c, h, w = q.shape
    s, p, hd = m.stride, m.pad, m.head_dim
    pe = m.pos(_coords(h, w, x))[0]
    reflect = min(h, w) > p

    def refl(i, n):
        return -i if i < 0 else (2 * (n - 1) - i if i >= n else i)

    ho, wo = -(-h // s), -(-w // s)
    out = torch.zeros(b_, c, ho, wo)
    for b in range(b_):
        for i in range(ho):
            for j in range(wo):
                yq, xq = i * s, j * s
                for head in range(m.head):
                    sl = slice(head * hd, (head + 1) * hd)
                    logits, values = [], []
                    for dy in range(-p, p + 1):
                        for dx in range(-p, p + 1):
                            yk, xk = yq + dy, xq + dx
                            if reflect:
                                yk, xk = refl(yk, h), refl(xk, w)
                            elif not (0 <= yk < h and 0 <= xk < w):
                                continue
                            rel = pe[:, yq, xq] - pe[:, yk, xk]
                            logits.append((q[b, sl, yq, xq] * (k[b, sl, yk, xk] + rel)).sum() / math.sqrt(hd))
                            values.append(v[b, sl, yk, xk])
                    a = torch.stack(logits).softmax(0)
                    out[b, sl, i, j] = (a[:, None] * torch.stack(values)).sum(0)
    return out


@pytest.mark.parametrize("stride", (1, 2))
@pytest.mark.parametrize("hw", ((6, 5), (2, 3), (1, 1)))  # reflect, masked, masked
def test_acmix_attention_matches_reference(hw, stride):
    torch.manual_seed(0)
    m = ACmix(8, 8, kernel_att=5, head=2, stride=stride)
    x = torch.randn(2, 8, *hw)
    with torch.no_grad():
        got = m._attention(m.q(x), m.k(x), m.v(x))
        torch.testing.assert_close(got, _reference_attention(m, x), atol=1e-5, rtol=1e-5)


def test_acmix_shift_init_and_rates():
    m = ACmix(16, 16, head=4)
    assert m.rate_att.item() == 0.5 and m.rate_conv.item() == 0.5
    assert m.shift.groups == m.head_dim and torch.all(m.shift.bias == 0)
    w = m.shift.weight  # (out, 9, 3, 3): map j -> one-hot at (j // 3, j % 3)
    for j in range(9):
        onehot = torch.zeros(3, 3)
        onehot[j // 3, j % 3] = 1
        assert torch.equal(w[:, j], onehot.expand_as(w[:, j]))
    # at init the shift conv is "shift map j by its offset and sum the 9 maps"
    x = torch.randn(1, 16, 5, 6)
    q, k, v = m.q(x), m.k(x), m.v(x)
    maps = m.fc(torch.cat([t.reshape(1, 4, 4, 30) for t in (q, k, v)], 1)).view(1, 9, 4, 5, 6)
    padded = nn.functional.pad(maps, (1, 1, 1, 1))
    summed = sum(padded[:, j, :, j // 3:j // 3 + 5, j % 3:j % 3 + 6] for j in range(9))  # (1, hd, 5, 6)
    expected = summed.unsqueeze(1).expand(1, 4, 4, 5, 6).reshape(1, 16, 5, 6)
    torch.testing.assert_close(m._convolution(q, k, v), expected)


def test_acmix_conv_path_channel_order():
    """The shift conv's output (head-dim-major) is permuted to the attention's (head, dim) order."""
    m = ACmix(8, 8, head=2)  # head_dim 4
    with torch.no_grad():
        m.shift.weight.zero_()
        m.shift.bias.zero_()
        m.shift.bias[3 * 2 + 1] = 1.0  # grouped layout: d = 3, head = 1
    x = torch.randn(1, 8, 5, 5)
    y = m._convolution(m.q(x), m.k(x), m.v(x))
    assert (y.abs().sum((0, 2, 3)) > 0).nonzero().flatten().tolist() == [1 * 4 + 3]


def test_acmix_gate_starts_at_half_half():
    torch.manual_seed(0)
    plain, gated = ACmix(16, 16), ACmix(16, 16, gate=True)
    missing = gated.load_state_dict(plain.state_dict(), strict=False)
    assert set(missing.unexpected_keys) == {"rate_att", "rate_conv"}
    x = torch.randn(3, 16, 7, 7)
    torch.testing.assert_close(gated(x), plain(x))
    # the gate is input dependent once trained
    with torch.no_grad():
        gated.gate[-1].weight.normal_()
    wts = gated.gate(x.mean((2, 3))).softmax(1)
    assert not torch.allclose(wts[0], wts[1])


def test_acmix_rejects_bad_heads():
    with pytest.raises(ValueError):
        ACmix(42, 42, head=4)


def test_acmix_coordinates_are_linspace():
    """The arange form of the position coordinates gives linspace's values."""
    ref = torch.zeros(1)
    for h, w in ((1, 1), (1, 5), (7, 7), (13, 9), (56, 56)):
        c = _coords(h, w, ref)
        torch.testing.assert_close(c[0, 0, 0], torch.linspace(-1, 1, w), atol=3e-7, rtol=0)
        torch.testing.assert_close(c[0, 1, :, 0], torch.linspace(-1, 1, h), atol=3e-7, rtol=0)


def test_acmix_exports_in_float32(tmp_path):
    """The ONNX export of ACmix computes in float32 (an exported linspace used to turn the block into
    float64, which OpenVINO refuses to compile) and, where OpenVINO is installed, runs there."""
    onnx = pytest.importorskip("onnx")
    torch.manual_seed(0)
    m = ACmix(16, 16, head=4).eval()
    x = torch.randn(1, 16, 8, 8)
    path = tmp_path / "acmix.onnx"
    torch.onnx.export(m, (x,), str(path), dynamo=False, opset_version=17)
    graph = onnx.load(str(path)).graph
    double = onnx.TensorProto.DOUBLE
    casts = [n.name for n in graph.node if n.op_type == "Cast" and any(a.name == "to" and a.i == double for a in n.attribute)]
    assert not casts, casts
    ov = pytest.importorskip("openvino")
    got = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})({0: x.numpy()})[0]
    with torch.no_grad():
        assert abs(got - m(x).numpy()).max() <= 1e-4
