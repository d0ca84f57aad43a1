"""bench/search_quality.py's protocol: the search never sees the scoring hold-out; random arms
are distinct architectures within +-3 % of the r=1/4 model's MACs."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import search_quality  # noqa: E402
from partialnet.data.cifar10 import CIFAR10DataModule  # noqa: E402
from partialnet.data.transforms import InMemoryImageDataset  # noqa: E402


def _numbered(first: int, n: int) -> InMemoryImageDataset:
    """n 8x8 images whose pixel [0, 0, 0] is their id (first .. first+n-1), 10 balanced classes."""
    images = torch.zeros(n, 3, 8, 8, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(first, first + n, dtype=torch.uint8)
    return InMemoryImageDataset(images, torch.arange(n) % 10, 8, (0.0,) * 3, (1.0,) * 3, train=False)


def test_search_split_drops_the_holdout_and_splits_the_rest(monkeypatch):
    monkeypatch.setattr(CIFAR10DataModule, "build_datasets", lambda self: (_numbered(0, 100), _numbered(100, 50)))
    dm = search_quality.SearchSplitCIFAR10(search_val_fraction=0.2, image_size=8)
    train, val = dm.build_datasets()
    ids_train = set(train.images[:, 0, 0, 0].tolist())
    ids_val = set(val.images[:, 0, 0, 0].tolist())
    assert ids_train.isdisjoint(ids_val) and ids_train | ids_val == set(range(100))  # never an id >= 100
    assert len(ids_val) == 20 and torch.bincount(val.labels).tolist() == [2] * 10  # stratified
    assert train.train and not val.train


def test_random_architectures_are_distinct_and_within_three_percent():
    specs, cost = search_quality._cost_table(32)
    archs = search_quality.random_architectures(3, seed=5)
    assert len({tuple(a) for a in archs}) == 3
    for ratios in archs:
        choice = [list(s.candidates).index(r) for s, r in zip(specs, ratios)]
        assert abs(cost.macs_of(choice) / cost.reference_macs - 1) <= 0.03
        assert len(set(ratios)) > 1  # not a uniform model
    assert archs == search_quality.random_architectures(3, seed=5)


@pytest.mark.slow  # the split space's arms are checked in the fast tier by the test above
def test_split_mlp_arms_are_real_models_within_three_percent_of_the_uniform_one():
    """--space split+mlp: each random arm, built as train.py builds it (ratios + mlp_ratios), has
    MACs within +-3 % of the uniform arm's, which is the default r=1/4 model itself."""
    from partialnet.measure import count
    from partialnet.models.registry import create_model

    def macs(arch):
        ratios, mlp = search_quality.model_lists(arch, "split+mlp")
        return count(create_model("partialnet_t0", num_classes=10, small_input=True, ratios=ratios,
                                  mlp_ratios=mlp), 32)["macs"]

    uniform = search_quality.uniform_architecture("split+mlp")
    default = count(create_model("partialnet_t0", num_classes=10, small_input=True), 32)["macs"]
    assert macs(uniform) == default
    archs = search_quality.random_architectures(2, seed=3, space="split+mlp")
    for arch in archs:
        ratios, mlp = search_quality.model_lists(arch, "split+mlp")
        assert len(ratios) == len(mlp) == 13 and len(set(mlp)) > 1  # the MLP widths vary too
        assert abs(macs(arch) / default - 1) <= 0.03


def test_mlp_wrapper_adds_its_default_searches_only_when_none_is_given(monkeypatch):
    """bench/search_quality_mlp.py: split+mlp space always; its two default searches unless the
    user names searches with --search (then only theirs); other arguments pass through."""
    import search_quality_mlp

    seen = []
    monkeypatch.setattr(search_quality, "main", lambda argv: seen.append(argv) or 0)

    search_quality_mlp.main(["--quick"])
    searches = [seen[-1][i + 1] for i, a in enumerate(seen[-1]) if a == "--search"]
    assert seen[-1][:2] == ["--space", "split+mlp"] and seen[-1][-1] == "--quick"
    assert searches == list(search_quality_mlp.SEARCHES) and len(searches) == 2

    search_quality_mlp.main(["--search", "mine=search.arch_lr=0.05", "--search-only"])
    assert seen[-1] == ["--space", "split+mlp", "--search", "mine=search.arch_lr=0.05", "--search-only"]

    search_quality_mlp.main(["--search=mine=search.tau_start=1"])
    assert seen[-1] == ["--space", "split+mlp", "--search=mine=search.tau_start=1"]

    search_quality_mlp.main(["--search-only"])  # not a --search: the defaults still come
    assert seen[-1].count("--search") == 2


def test_random_architectures_follow_the_budget():
    """--flops-ratio: the random arms are drawn around the budget, not around the r=1/4 model."""
    specs, cost = search_quality._cost_table(32)
    for ratios in search_quality.random_architectures(2, seed=5, flops_ratio=1.15):
        choice = [list(s.candidates).index(r) for s, r in zip(specs, ratios)]
        assert abs(cost.macs_of(choice) / cost.reference_macs / 1.15 - 1) <= 0.03


def test_uniform_at_budget_is_the_nearest_uniform_model():
    """The hand-made arm at another budget: one split ratio everywhere, and its MACs ratio is the one
    nearest the budget among all uniform models (checked against each candidate's own ratio)."""
    arch, ratio = search_quality.uniform_at_budget(1.0)
    assert arch == search_quality.uniform_architecture() and ratio == pytest.approx(1.0)
    specs, cost = search_quality._cost_table(32)
    own = {r: cost.macs_of([list(s.candidates).index(r) for s in specs]) / cost.reference_macs
           for r in specs[0].candidates}
    for budget in (0.9, 0.952, 1.2, 1.3):
        arch, ratio = search_quality.uniform_at_budget(budget)
        assert len(set(arch)) == 1 and ratio == pytest.approx(own[arch[0]])
        assert all(abs(ratio - budget) <= abs(other - budget) for other in own.values())


@pytest.mark.parametrize("ratio, needle", [("0", "--flops-ratio 0 must be > 0"),
                                           ("0.5", "--flops-ratio 0.5 in space split: no configuration")])
def test_bad_flops_ratio_is_a_one_line_usage_error_before_any_run(monkeypatch, tmp_path, capsys, ratio, needle):
    """A budget <= 0 or one the space cannot reach exits 2 with one line, before a search starts."""
    monkeypatch.setattr(search_quality, "_run", lambda *a, **k: pytest.fail("a run started"))
    with pytest.raises(SystemExit) as e:
        search_quality.main(["--flops-ratio", ratio, "--quick", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and needle in err[-1] and "Traceback" not in "".join(err)
