"""One-line errors (exit 2) of the search and of retraining with a ratios file that does not fit."""
from __future__ import annotations

import pytest
import yaml

from conftest import FAST_TRAIN, assert_user_error, full_depth, run_cli
from test_search_cli import FAST_SEARCH


def test_infeasible_target_fails_before_training(tmp_path):
    proc = run_cli("search_dpconv.py", [*FAST_SEARCH, "search.flops_ratio=0.5", f"hydra.run.dir={tmp_path}/s"])
    assert_user_error(proc, "flops_ratio=0.5", "not feasible", "GMACs")
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize(
    "content,needles",
    [
        (dict(model="fasternet_t0", ratios=[0.25] * 13), ["fasternet_t0", "partialnet_t0"]),  # another model
        (dict(model="partialnet_t0", ratios=[0.25] * 12), ["12 ratios", "13"]),  # wrong number of layers
        (dict(model="partialnet_t0", ratios=[0.25] * 12 + [0.001]), ["layer 12", "0.001", "width 256"]),  # not realisable
    ],
    ids=["other-model", "layer-count", "unrealisable"],
)
def test_ratios_file_that_does_not_fit_is_one_line(tmp_path, content, needles):
    bad = tmp_path / "ratios.yaml"
    bad.write_text(yaml.safe_dump(content))
    proc = run_cli("train.py", [*full_depth(FAST_TRAIN), f"model.ratios={bad}", f"hydra.run.dir={tmp_path}/t"])
    assert_user_error(proc, *needles)
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize(
    "override,needles",
    [
        ("search.warmup_epochs=2", ["warmup_epochs=2", "max_epochs=2"]),
        ("search.loss=l1", ["search.loss", "squared"]),
        ("search.candidates=[0.5,1.5]", ["candidates", "1.5"]),
        ("search.arch_optimizer=rmsprop", ["search.arch_optimizer='rmsprop'", "adam or sgd"]),
        ("search.entropy_weight=-1", ["search.entropy_weight=-1", ">= 0"]),
        ("search.arch_split=1.5", ["search.arch_split=1.5", "[0, 1)"]),
        ("search.argmax_ramp=maybe", ["search.argmax_ramp='maybe'", "true or false"]),
        ("search.final_selection=best", ["search.final_selection='best' is unknown", "argmax, supernet"]),
    ],
    ids=["warmup", "loss", "candidates", "arch-optimizer", "entropy-weight", "arch-split", "argmax-ramp",
         "final-selection"],
)
def test_bad_search_settings_are_one_line(tmp_path, override, needles):
    proc = run_cli("search_dpconv.py", [*FAST_SEARCH, override, f"hydra.run.dir={tmp_path}/s"])
    assert_user_error(proc, *needles)
