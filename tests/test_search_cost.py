"""Cost model (exact per-layer MACs), constraint loss, target feasibility and the projection."""
from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch

import partialnet
from partialnet.errors import UserError
from partialnet.measure import count
from partialnet.search.constraint import check_reachable, flops_loss, project_to_band, resolve_target
from partialnet.search.cost_model import CostTable, build_cost_table
from partialnet.search.export import final_choice
from partialnet.search.gumbel import masked_logits
from partialnet.search.supernet import layer_specs


CASES = [
    ("partialnet_t0", dict(num_classes=10, small_input=True), 32),
    ("patnet_t0", dict(embed_dim=24, depths=(1, 1, 2, 2), num_classes=10), 64),  # width 24, 2x2 attention map
    ("fasternet_t0", dict(num_classes=10, small_input=True), 32),
]


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def case(request):
    name, kw, size = request.param
    model = partialnet.create_model(name, **kw)
    specs = layer_specs(model)
    return name, kw, size, specs, build_cost_table(model, specs, size)


def test_table_plus_fixed_is_the_counted_static_model(case):
    """For one-hot choices, F_fixed + sum_l F[l][r_l] == count(static model) exactly."""
    name, kw, size, specs, cost = case
    rng = random.Random(0)
    choices = [[s.reference_index() for s in specs]]
    choices += [[max(c for c, k in enumerate(s.ks) if k is not None) for s in specs]]
    choices += [[rng.choice([c for c, k in enumerate(s.ks) if k is not None]) for s in specs] for _ in range(1)]
    for choice in choices:
        ratios = [s.candidates[c] for s, c in zip(specs, choice)]
        counted = count(partialnet.create_model(name, ratios=ratios, **kw), size)["macs"]
        assert cost.macs_of(choice) == counted, choice
        # E[F] with one-hot probabilities is the same number
        probs = torch.zeros(len(specs), len(specs[0].ks))
        probs[range(len(specs)), choice] = 1.0
        assert cost.expected(probs).item() == counted
    assert cost.reference_macs == count(partialnet.create_model(name, **kw), size)["macs"]


def test_table_includes_the_attention_that_grows_as_r_shrinks(case):
    name, _, _, specs, cost = case
    for spec, row in zip(specs, cost.macs):
        valid = [v for v in row if v is not None]
        if spec.kind == "pconv":
            assert valid == sorted(valid, reverse=True)  # only the conv changes: monotone in r
        if spec.kind == "pat_sf":
            # r = 1/16 leaves the widest attention (qkv/proj ~ C_u^2): dearer than r = 1/4
            assert row[3] > row[1]


def test_expected_flops_is_differentiable_and_the_loss_drives_it_to_the_target(case):
    """Toy problem: only the logits learn, under the constraint loss alone."""
    _, _, _, specs, cost = case
    valid = cost.valid()
    table = cost.tensor()
    for kind, ratio in (("squared", 0.97), ("squared", 1.15), ("hinge", 0.97)):
        target = ratio * cost.reference_macs
        logits = torch.zeros(len(specs), len(specs[0].ks), requires_grad=True)
        opt = torch.optim.Adam([logits], lr=0.1)
        for _ in range(120):
            expected = cost.expected(torch.softmax(masked_logits(logits, valid), -1), table)
            loss = flops_loss(expected, target, kind, 1.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
        final = expected.item() / target
        if kind == "squared":
            assert abs(final - 1) < 0.005, (kind, ratio, final)
        else:  # hinge only pushes down; below the target nothing pulls (Adam's momentum may coast a little)
            assert 0.94 < final <= 1.002, (kind, ratio, final)


def test_infeasible_targets_name_the_range(case):
    _, _, _, _, cost = case
    lo, hi = cost.min_macs / 1e9, cost.max_macs / 1e9
    for kw in (dict(flops_target=lo * 0.9), dict(flops_target=hi * 1.1), dict(flops_ratio=0.5), dict(flops_ratio=2.0)):
        with pytest.raises(UserError, match="not feasible") as e:
            resolve_target(cost, kw.get("flops_target"), kw.get("flops_ratio"))
        assert f"{lo:.4g}" in str(e.value) and f"{hi:.4g}" in str(e.value)
    assert resolve_target(cost, (lo + hi) / 2, None) == pytest.approx((lo + hi) / 2 * 1e9)
    assert resolve_target(cost, None, 1.0) == cost.reference_macs
    assert resolve_target(cost, cost.min_macs / 1e9, 5.0) == pytest.approx(cost.min_macs)  # flops_target wins
    with pytest.raises(UserError, match="flops_target"):
        resolve_target(cost, -1.0, None)


def _toy_table(seed: int, layers: int = 5, cands: int = 3) -> CostTable:
    rng = np.random.default_rng(seed)
    macs = [[int(v) for v in rng.integers(10_000, 200_000, cands)] for _ in range(layers)]
    macs[1][2] = None  # a candidate dropped at one layer
    return CostTable(macs=macs, fixed=1_000_000, input_size=(3, 32, 32), reference_macs=1_300_000, reference_ratio=0.25)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_projection_is_the_most_probable_configuration_in_band(seed):
    cost = _toy_table(seed)
    rng = np.random.default_rng(100 + seed)
    log_probs = np.log(rng.dirichlet(np.ones(3), size=5))
    target = (cost.min_macs + cost.max_macs) / 2
    tol = 0.03
    best, best_lp = None, -np.inf
    for choice in itertools.product(*[[c for c, v in enumerate(r) if v is not None] for r in cost.macs]):
        m = cost.macs_of(choice)
        lp = sum(log_probs[l, c] for l, c in enumerate(choice))
        if abs(m / target - 1) <= tol and lp > best_lp:
            best, best_lp = list(choice), lp
    proj = project_to_band(cost, log_probs, target, tol)
    assert proj.in_band and abs(proj.macs / target - 1) <= tol
    assert proj.log_prob == pytest.approx(best_lp) and proj.choice == best


def test_unreachable_band_is_a_user_error():
    cost = CostTable(macs=[[0, 1_000_000]], fixed=1_000_000, input_size=(3, 8, 8), reference_macs=1, reference_ratio=0.25)
    with pytest.raises(UserError, match="within"):
        check_reachable(cost, 1_500_000, 0.03)  # configurations cost 1.0 M or 2.0 M only
    assert check_reachable(cost, 1_990_000, 0.03) == [1]


def test_final_choice_projects_only_when_the_argmax_misses(case):
    _, _, _, specs, cost = case
    valid = cost.valid()
    prefer = [s.reference_index() for s in specs]
    logits = torch.zeros(len(specs), len(specs[0].ks))
    logits[range(len(specs)), prefer] = 3.0  # argmax = the reference model
    on = final_choice(cost, specs, logits, valid, cost.reference_macs, 0.03, prefer)
    assert not on.projection_used and on.choice == prefer and on.macs == cost.reference_macs
    target = 1.15 * cost.reference_macs
    off = final_choice(cost, specs, logits, valid, target, 0.03, prefer)
    assert off.projection_used and off.in_band and abs(off.macs / target - 1) <= 0.03
    assert off.changed_layers and off.argmax_macs == cost.reference_macs
