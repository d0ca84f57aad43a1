"""The masked supernet: one-hot forward == the static model built with that ratio (same weights)."""
from __future__ import annotations

import copy
import random

import pytest
import torch

import partialnet
from partialnet.errors import UserError
from partialnet.search.gumbel import gumbel_softmax, masked_logits
from partialnet.search.supernet import (
    arch_choice,
    extract_static,
    layer_channels,
    masked_modules,
    onehot_weights,
    parse_candidates,
    to_supernet,
)


# Small, non-power-of-two widths: PAT_ch + PAT_sf (PartialNet / PATNet) and PConv (FasterNet).
MODELS = {
    "partialnet": ("partialnet_t0", dict(embed_dim=24, depths=(1, 1, 2, 1), num_classes=7, small_input=True)),
    "patnet": ("patnet_t0", dict(embed_dim=20, depths=(1, 1, 1, 2), num_classes=7, small_input=True, pat_sp=False)),
    "fasternet": ("fasternet_t0", dict(embed_dim=20, depths=(1, 1, 1, 1), num_classes=7, small_input=True)),
}


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial weights and running statistics, so that mismatches would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.5) + (1.0 if "norm.weight" in name else 0.0))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.2)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)


def _no_dropout(model):
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def _supernet(key: str, seed: int = 0):
    name, kw = MODELS[key]
    torch.manual_seed(seed)
    model = partialnet.create_model(name, **kw)
    specs = to_supernet(model)
    _randomise(model, seed)
    return name, kw, model, specs


def _choices(specs):
    """Every candidate at every layer where it exists (else the reference), plus two mixed choices."""
    out = []
    for c in range(len(specs[0].ks)):
        out.append([c if s.ks[c] is not None else s.reference_index() for s in specs])
    rng = random.Random(0)
    for _ in range(2):
        out.append([rng.choice([c for c, k in enumerate(s.ks) if k is not None]) for s in specs])
    return out


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("key", list(MODELS))
def test_one_hot_supernet_equals_static_model(key):
    name, kw, sup, specs = _supernet(key)
    mods = masked_modules(sup, specs)
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    _no_dropout(sup)
    for choice in _choices(specs):
        for train in (False, True):
            sup.train(train)
            static = extract_static(sup, specs, choice)
            _no_dropout(static)
            before = copy.deepcopy(sup.state_dict())
            with torch.no_grad(), arch_choice(mods, onehot_weights(specs, choice), choice):
                y_sup = sup(x)
            y_static = static(x)
            assert _rel(y_sup, y_static) < 1e-4, (choice, train)  # fp32 rounding; a wrong operator is O(1)
            if train:
                # running statistics: the active channels got exactly the static update ...
                after = extract_static(sup, specs, choice).state_dict()
                for k, v in static.state_dict().items():
                    if v.is_floating_point():
                        assert _rel(after[k], v) < 1e-4, (k, choice)  # fp32 rounding
                    else:
                        assert torch.equal(after[k], v), (k, choice)
                # ... and inactive channels kept theirs
                for spec, c in zip(specs, choice):
                    if spec.kind != "pat_ch":
                        continue
                    inactive = spec.ks[c] - spec.k_min  # leading channels of the attention side
                    for bn in ("srm_norm", "norm"):
                        key_ = f"{spec.name}.{bn}.running_mean"
                        assert torch.equal(sup.state_dict()[key_][:inactive], before[key_][:inactive])
                sup.load_state_dict(before)


@pytest.mark.parametrize("key", list(MODELS))
def test_per_layer_one_hot_equals_static_split(key):
    """Layer by layer, in train mode, on a random input: the masked split == the static split."""
    _, _, sup, specs = _supernet(key, seed=3)
    _no_dropout(sup)
    sup.train()
    for spec, masked in zip(specs, masked_modules(sup, specs)):
        x = torch.randn(4, spec.dim, 5, 6, generator=torch.Generator().manual_seed(spec.index))
        for c, k in enumerate(spec.ks):
            if k is None:
                continue
            static = extract_static(sup, specs, [c if s is spec else s.reference_index() for s in specs])
            split = static.get_submodule(spec.name)
            _no_dropout(split)
            assert split.dim_conv == k
            masked_state = copy.deepcopy(masked.state_dict())
            with torch.no_grad(), arch_choice([masked], onehot_weights([spec], [c]), [c]):
                y = masked(x)
            masked.load_state_dict(masked_state)
            assert _rel(y, split(x)) < 1e-5, (spec.describe(), c)


@pytest.mark.parametrize("key", list(MODELS))
def test_supernet_of_a_model_is_that_model(key):
    """Converting copies the static weights: the one-hot supernet at r = 1/4 is the original model."""
    name, kw = MODELS[key]
    torch.manual_seed(5)
    model = partialnet.create_model(name, **kw)
    _randomise(model, 5)
    model.eval()
    sup = copy.deepcopy(model)
    specs = to_supernet(sup)
    ref = [s.reference_index() for s in specs]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad(), arch_choice(masked_modules(sup, specs), onehot_weights(specs, ref), ref):
        assert _rel(sup(x), model(x)) < 1e-5
    back = extract_static(sup, specs, ref)
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


@pytest.mark.parametrize("key", list(MODELS))
def test_extracted_model_is_the_registry_model_with_those_ratios(key):
    name, kw, sup, specs = _supernet(key)
    choice = _choices(specs)[-1]
    ratios = [s.candidates[c] for s, c in zip(specs, choice)]
    static = extract_static(sup, specs, choice)
    rebuilt = partialnet.create_model(name, ratios=ratios, **kw)
    rebuilt.load_state_dict(static.state_dict(), strict=True)  # same keys and shapes
    x = torch.randn(2, 3, 32, 32)
    static.eval()
    rebuilt.eval()
    assert torch.allclose(rebuilt(x), static(x))


def test_straight_through_sample_runs_the_exact_architecture_and_soft_mixes():
    _, _, sup, specs = _supernet("partialnet", seed=7)
    _no_dropout(sup)
    sup.train()
    mods = masked_modules(sup, specs)
    valid = torch.tensor([s.valid for s in specs])
    logits = torch.zeros(len(specs), len(specs[0].ks), requires_grad=True)
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(0)
    w = gumbel_softmax(masked_logits(logits, valid), 1.0, hard=True)
    idx = w.detach().argmax(-1).tolist()
    with arch_choice(mods, w, idx):
        y_st = sup(x)
    y_st.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0  # the logits learn through the masks
    with torch.no_grad(), arch_choice(mods, onehot_weights(specs, idx), idx):
        assert torch.equal(sup(x), y_st.detach())
    # soft weights: a differentiable mixture, finite, between the candidates
    soft = gumbel_softmax(masked_logits(logits, valid), 1.0, hard=False)
    with arch_choice(mods, soft):
        y_soft = sup(x)
    assert torch.isfinite(y_soft).all() and y_soft.shape == y_st.shape


def test_candidates_per_width():
    cands = parse_candidates([0.5, 0.25, "1/8", 0.0625])
    assert cands == [0.5, 0.25, 0.125, 0.0625]
    assert layer_channels(40, cands) == [20, 10, 5, 3]  # FasterNet-T0 width: not a power of two
    assert layer_channels(8, cands) == [4, 2, 1, None]  # 1/16 of 8 rounds to 1 = 1/8's width: dropped
    assert layer_channels(3, cands) == [2, 1, None, None]  # 1/8 of 3 leaves no conv channel
    for bad in ([], [0.0], [1.0], [0.5, 0.5], ["x"], "0.5"):
        with pytest.raises(UserError, match="candidates"):
            parse_candidates(bad)


def test_layer_without_any_candidate_is_a_user_error():
    model = partialnet.create_model("fasternet_t0", embed_dim=8, depths=(1, 1, 1, 1), num_classes=3, small_input=True)
    with pytest.raises(UserError, match="width 8"):
        to_supernet(model, [0.999])


def test_forward_without_architecture_weights_says_so():
    _, _, sup, specs = _supernet("fasternet")
    with pytest.raises(RuntimeError, match="arch_choice"):
        sup(torch.randn(1, 3, 32, 32))
