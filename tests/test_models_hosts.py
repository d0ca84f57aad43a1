"""Plug-in hosts (torchvision ResNet-50 / MobileNetV2) and ``replace_convs``."""
import pytest
import timm
import torch
import torch.nn as nn
from torchvision import models as tvm

import partialnet
from partialnet.errors import UserError
from partialnet.models.hosts import is_dense_3x3, is_depthwise_3x3, replace_convs
from partialnet.models.layers.acmix import ACmix
from partialnet.models.layers.pat import PATChannel
from partialnet.models.layers.scconv import SCConv

HOSTS = ("patconv_resnet50", "patconv_mobilenetv2", "scconv_resnet50", "acmix_resnet50")
R50_3X3 = [f"layer{i}.{j}.conv2" for i, n in enumerate((3, 4, 6, 3), 1) for j in range(n)]


def _params(m):
    return sum(p.numel() for p in m.parameters())


class _Marker(nn.Module):
    def __init__(self, conv):
        super().__init__()
        self.conv = conv  # holds the replaced conv: must not be searched again


def test_replace_convs_exactly_the_matches():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.Sequential(nn.Conv2d(8, 8, 3), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, groups=8)),
        nn.Conv2d(8, 8, 3, stride=2),
    )
    names = replace_convs(model, is_dense_3x3, _Marker)
    assert names == ["1.0", "2"]
    assert isinstance(model[1][0], _Marker) and isinstance(model[2], _Marker)
    assert model[2].conv.stride == (2, 2)
    assert all(type(m) is nn.Conv2d for m in (model[0], model[1][1], model[1][2]))
    assert replace_convs(model, is_depthwise_3x3, nn.Identity) == ["1.2"]
    assert replace_convs(model, lambda c: False, nn.Identity) == []


def test_replace_convs_resnet50_bottlenecks():
    model = tvm.resnet50(weights=None)
    before = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    names = replace_convs(model, is_dense_3x3, nn.Identity)
    assert names == R50_3X3
    after = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert before - after == set(R50_3X3)


@pytest.mark.parametrize("name", HOSTS)
def test_host_forward_backward(name):
    torch.manual_seed(0)
    model = partialnet.create_model(name, num_classes=10)
    y = model(torch.randn(2, 3, 64, 64))
    assert y.shape == (2, 10)
    y.square().mean().backward()
    params = dict(model.named_parameters())
    assert params, "the model has no parameters"
    no_grad = [n for n, p in params.items() if p.grad is None]
    assert not no_grad, f"no gradient reached {no_grad[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in params.values())
    # the first replaced 3x3 conv and the stem (upstream of every replaced block) learn
    first = next(n for n in params if n.startswith(("layer1.0.conv2.", "features.1.")))
    stem = next(iter(params))
    assert params[first].grad.abs().sum() > 0 and params[stem].grad.abs().sum() > 0, (first, stem)
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875
    assert cfg["interpolation"] == "bilinear" and cfg["num_classes"] == 10


def test_host_blocks_and_strides():
    model = partialnet.create_model("patconv_resnet50", num_classes=10)
    for name in R50_3X3:
        block = model.get_submodule(name)
        if name.endswith(".0.conv2") and not name.startswith("layer1"):  # the stride-2 bottlenecks
            assert isinstance(block[0], nn.AvgPool2d) and isinstance(block[1], PATChannel)
        else:
            assert isinstance(block, PATChannel)
    sc = partialnet.create_model("scconv_resnet50", num_classes=10)
    assert [sc.get_submodule(n).stride for n in R50_3X3].count(2) == 3
    assert all(isinstance(sc.get_submodule(n), SCConv) for n in R50_3X3)
    ac = partialnet.create_model("acmix_resnet50", num_classes=10)
    assert [ac.get_submodule(n).stride for n in R50_3X3].count(2) == 3
    assert all(isinstance(ac.get_submodule(n), ACmix) for n in R50_3X3)
    mb = partialnet.create_model("patconv_mobilenetv2", num_classes=10)
    assert not any(is_depthwise_3x3(m) for m in mb.modules() if isinstance(m, nn.Conv2d))
    assert sum(isinstance(m, PATChannel) for m in mb.modules()) == 17


@pytest.mark.parametrize("name, paper", [("scconv_resnet50", 16.78e6), ("acmix_resnet50", 18.6e6)])
def test_host_params_match_papers(name, paper):
    n = _params(partialnet.create_model(name))
    assert abs(n - paper) / paper < 0.05, n


def test_patconv_host_params():
    """No published counts (PartialNet Tab. 5 is unverified): pin ours to catch regressions."""
    assert _params(partialnet.create_model("patconv_resnet50")) == pytest.approx(16.37e6, rel=0.01)
    assert _params(partialnet.create_model("patconv_mobilenetv2")) == pytest.approx(11.08e6, rel=0.01)


@pytest.mark.slow
@pytest.mark.parametrize("name, paper", [("scconv_resnet50", 2.70e9), ("acmix_resnet50", 3.6e9)])
def test_host_macs_match_papers(name, paper):
    from partialnet.measure import count

    macs = count(partialnet.create_model(name), 224)["macs"]  # fvcore multiply-adds
    assert abs(macs - paper) / paper < 0.05, macs


def test_host_options_and_errors():
    m = timm.create_model("patconv_mobilenetv2", num_classes=5, split_ratio=0.5, width_mult=0.5)
    pats = [x for x in m.modules() if isinstance(x, PATChannel)]
    assert pats and all(p.ratio == 0.5 for p in pats)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    m = partialnet.create_model("acmix_resnet50", num_classes=3, block_kwargs=dict(gate=True, head=2))
    assert m.layer1[0].conv2.gate is not None and m.layer1[0].conv2.head == 2
    with pytest.raises(UserError):
        timm.create_model("scconv_resnet50", pretrained=True)
    with pytest.raises(UserError):
        partialnet.create_model("scconv_resnet50", no_such_option=1)
