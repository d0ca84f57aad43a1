"""timm's model API on the registered variants: features_only, forward_intermediates,
grad checkpointing, group_matcher, pruning."""
from __future__ import annotations

import pytest
import timm
import torch
from timm.models import group_parameters
from timm.optim import param_groups_layer_decay

import partialnet
from partialnet.models.backbone import PartialChannelNet


@pytest.mark.parametrize("factory", [timm.create_model, partialnet.create_model])
def test_features_only(factory):
    model = factory("partialnet_t0", features_only=True).eval()
    assert model.feature_info.channels() == [32, 64, 128, 256]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        feats = model(torch.randn(2, 3, 96, 64))
    assert [tuple(f.shape) for f in feats] == [(2, 32, 24, 16), (2, 64, 12, 8), (2, 128, 6, 4), (2, 256, 3, 2)]


def test_features_only_out_indices_and_kwargs():
    ratios = [0.5] * 13
    model = timm.create_model("patnet_t0", features_only=True, out_indices=(1, 3), ratios=ratios, pat_sp=False)
    assert model.feature_info.channels() == [80, 320]
    feats = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [80, 320]
    small = partialnet.create_model("fasternet_t0", features_only=True, small_input=True, in_chans=1)
    assert small.feature_info.reduction() == [2, 4, 8, 16]
    assert [f.shape[-1] for f in small(torch.randn(1, 1, 32, 32))] == [16, 8, 4, 2]


def test_forward_intermediates_matches_features():
    model = partialnet.create_model("partialnet_t0").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        assert [t.shape[1] for t in inter] == [32, 64, 128, 256]
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        torch.testing.assert_close(last_two[0], inter[2])
        early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
        torch.testing.assert_close(early[0], inter[1])


def test_prune_intermediate_layers():
    model = partialnet.create_model("partialnet_t0").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model.forward_intermediates(x, intermediates_only=True)
    kept = model.prune_intermediate_layers([0, 1])
    assert kept == [0, 1] and len(model.stages) == 2 and model.num_features == 64
    with torch.no_grad():
        torch.testing.assert_close(model.forward_intermediates(x, intermediates_only=True)[1], ref[1])
        assert model(x).shape == (1, 64)  # head removed: pooled features


def _forward_backward(model, x):
    """Gradients, and how many tensors autograd saved for backward during the forward pass."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(1) or t, lambda t: t):
        loss = model(x).sum()
    model.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in model.parameters()], len(saved)


def test_grad_checkpointing_same_gradients_fewer_saved_tensors():
    torch.manual_seed(0)
    model = partialnet.create_model("partialnet_t0", num_classes=5).eval()  # eval: no BN-statistic drift
    x = torch.randn(2, 3, 64, 64)
    ref, saved_plain = _forward_backward(model, x)
    model.set_grad_checkpointing(True)
    assert all(s.grad_checkpointing for s in model.stages)
    grads, saved_ckpt = _forward_backward(model, x)
    assert saved_ckpt < saved_plain / 3, (saved_ckpt, saved_plain)
    for a, g in zip(ref, grads):
        torch.testing.assert_close(g, a)


def test_group_matcher_with_timm_optim_helpers():
    model = partialnet.create_model("partialnet_t0")
    groups = group_parameters(model, model.group_matcher(coarse=True))
    assert len(groups) == 6  # stem, 4 stages, head
    assert list(groups[0]) == ["stem.conv.weight", "stem.norm.weight", "stem.norm.bias"]
    # the same grouping as timm's own FasterNet of equal depths
    theirs = timm.create_model("fasternet_t0")
    fine = group_parameters(model, model.group_matcher())
    assert len(fine) == len(group_parameters(theirs, theirs.group_matcher())) == 15
    lrd = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.5)
    scales = {g["lr_scale"] for g in lrd}
    assert max(scales) == 1.0 and min(scales) < 1e-4
    in_groups = sum(len(g["params"]) for g in lrd)
    assert in_groups == len(list(model.parameters()))
    assert isinstance(timm.create_model("partialnet_t0"), PartialChannelNet)
