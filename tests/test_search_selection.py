"""search.final_selection=supernet: the exported architecture is the best-scored candidate in the band."""
from __future__ import annotations

import csv

import pytest
import torch
import yaml

import partialnet
from partialnet.errors import UserError
from partialnet.search.cost_model import build_cost_table
from partialnet.search.selection import (Candidate, pick_best, score_choice, selection_candidates, standard_error,
                                        uniform_choices)
from partialnet.search.supernet import DEFAULT_CANDIDATES, layer_specs, to_supernet
from conftest import FAST_TRAIN
from test_search_loop import _compose

CANDIDATES = list(DEFAULT_CANDIDATES)


def _space(space: str = "split"):
    model = partialnet.create_model("partialnet_t0", num_classes=10, small_input=True, depths=(1, 1, 1, 1))
    specs = layer_specs(model, CANDIDATES, space=space)
    return model, specs


def test_uniform_choices_put_one_value_everywhere():
    _, specs = _space("split+mlp")
    out = uniform_choices(specs)
    split_values = sorted({float(c) for s in specs if s.kind != "mlp" for c, k in zip(s.candidates, s.ks) if k})
    mlp_values = sorted({float(c) for s in specs if s.kind == "mlp" for c, k in zip(s.candidates, s.ks) if k})
    assert len(out) == len(split_values) * len(mlp_values) and len(mlp_values) > 1
    for label, choice in out:
        split = {float(s.candidates[c]) for s, c in zip(specs, choice) if s.kind != "mlp"}
        mlp = {float(s.candidates[c]) for s, c in zip(specs, choice) if s.kind == "mlp"}
        assert len(split) == 1 and len(mlp) == 1, label  # every row of a kind has the value (all valid here)
        assert label == f"uniform r={split.pop():g}, MLP {mlp.pop():g}"


def test_candidates_are_the_argmax_then_uniform_then_samples_all_in_band_and_distinct():
    model, specs = _space()
    cost = build_cost_table(model, specs, 32)
    valid = cost.valid()
    logits = torch.randn(valid.shape, generator=torch.Generator().manual_seed(0))
    target, tol = cost.reference_macs, 0.03
    argmax = [s.reference_index() for s in specs]  # the r=1/4 model: in band by construction
    cands = selection_candidates(cost, specs, logits, valid, argmax, target, tol, samples=5, seed=0)
    assert cands[0].source == "argmax" and cands[0].choice == argmax
    keys = [tuple(c.choice) for c in cands]
    assert len(set(keys)) == len(keys)
    assert all(abs(cost.macs_of(c.choice) / target - 1) <= tol for c in cands)
    samples = [c for c in cands if c.source.startswith("sample")]
    assert 1 <= len(samples) <= 5
    # every uniform model in the band, once, in order; the r=1/4 one is the argmax here, so not repeated
    def in_band(ch, t):
        return abs(cost.macs_of(ch) / t - 1) <= tol

    uniform = uniform_choices(specs)
    expected = [label for label, ch in uniform if in_band(ch, target) and ch != argmax]
    assert [c.source for c in cands if c.source.startswith("uniform")] == expected
    assert len(expected) < len(uniform) - 1  # the band leaves some uniform models out
    # a band around the r=1/16 model: the argmax stays first, in band or not, then that model
    sixteenth = next(ch for label, ch in uniform if label == "uniform r=0.0625")
    cands = selection_candidates(cost, specs, logits, valid, argmax, cost.macs_of(sixteenth), tol, samples=0)
    assert cands[0].source == "argmax" and "uniform r=0.0625" in [c.source for c in cands]
    assert all(in_band(c.choice, cost.macs_of(sixteenth)) for c in cands[1:])


def test_pick_best_takes_the_highest_score_and_keeps_the_earlier_on_a_tie():
    cands = [Candidate("argmax", [0], 1.0), Candidate("uniform r=0.25", [1], 1.0), Candidate("sample 1", [2], 1.0)]
    assert pick_best(cands, lambda c: {"argmax": 50.0, "uniform r=0.25": 61.0, "sample 1": 55.0}[c.source]).source \
        == "uniform r=0.25"
    assert [c.score for c in cands] == [50.0, 61.0, 55.0]
    assert pick_best(cands, lambda c: 60.0).source == "argmax"


def test_scoring_leaves_the_supernet_untouched_and_recalibrates_batchnorm(monkeypatch):
    import partialnet.search.selection as selection

    built = []
    real = selection.extract_static
    monkeypatch.setattr(selection, "extract_static", lambda *a: built.append(real(*a)) or built[-1])
    model, specs = _space()
    to_supernet(model, CANDIDATES)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 32, 32, generator=gen) * 3 + 1
    y = torch.randint(0, 10, (64,), generator=gen)
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    choice = [s.reference_index() for s in specs]
    score, n = score_choice(model, specs, choice, batches, batches, calib_batches=3, score_batches=None)
    assert 0.0 <= score <= 100.0 and n == 64
    assert score_choice(model, specs, choice, batches, batches, calib_batches=3, score_batches=2)[1] == 32
    with pytest.raises(UserError, match="found no validation batch"):
        score_choice(model, specs, choice, batches, [], calib_batches=1, score_batches=None)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # every BatchNorm of the scored model: statistics reset, then a cumulative average over the 3
    # calibration batches asked for (of the 4 given), and the model scored in eval mode
    bns = [m for m in built[0].modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and not built[0].training
    assert all(int(m.num_batches_tracked) == 3 and m.momentum is None for m in bns)


def test_standard_error_is_the_binomial_one():
    assert standard_error(50.0, 10_000) == pytest.approx(0.5)
    assert standard_error(55.0, 4_500) == pytest.approx(100 * (0.55 * 0.45 / 4500) ** 0.5)
    assert standard_error(100.0, 10) == 0.0


def test_bad_selection_options_are_one_line_errors():
    from partialnet.search.search_task import _check_search_cfg

    base = dict(_compose([]).search)
    for key, value, needle in (("final_selection", "best", "search.final_selection='best' is unknown"),
                               ("selection_samples", -1, "search.selection_samples=-1 must be an integer >= 0"),
                               ("selection_batches", 0, "search.selection_batches=0 must be an integer >= 1")):
        with pytest.raises(UserError, match=needle.replace("(", r"\(").replace("[", r"\[")):
            _check_search_cfg({**base, key: value}, 3)


def test_search_exports_the_best_scored_candidate(tmp_path):
    """End to end: selection.csv lists the candidates with their scores; ratios.yaml is the one
    marked chosen, which has the highest score, and lands in the band."""
    from partialnet.search.search_task import search

    out = tmp_path / "run"
    cfg = _compose([*FAST_TRAIN, "model.small_input=true", "trainer.max_epochs=2", "search.warmup_epochs=1",
                    "search.flops_ratio=0.97", "search.final_selection=supernet", "search.selection_samples=6",
                    "search.selection_calib_batches=2", "callbacks.best_checkpoint=null",
                    f"paths.output_dir={out}", f"paths.log_dir={tmp_path}"])
    metrics = search(cfg)
    rows = list(csv.DictReader(open(out / "selection.csv")))
    assert rows[0]["source"] == "argmax" and len(rows) >= 3
    chosen = [r for r in rows if r["chosen"] == "1"]
    assert len(chosen) == 1
    best = max(float(r["val_top1"]) for r in rows)
    assert float(chosen[0]["val_top1"]) == best
    assert next(r for r in rows if float(r["val_top1"]) == best) is chosen[0]  # ties: the earliest
    info = yaml.safe_load((out / "ratios.yaml").read_text())
    layer_cols = [k for k in rows[0] if k not in ("source", "chosen", "macs", "val_top1")]
    assert info["ratios"] == [float(chosen[0][k]) for k in layer_cols]
    assert abs(info["macs"] / info["target_macs"] - 1) <= 0.03
    assert metrics["search/selection_argmax_kept"] == float(chosen[0]["source"] == "argmax")
    assert metrics["search/selection_val_acc1"] == pytest.approx(best, abs=1e-3)
