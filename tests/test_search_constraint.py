"""search.constraint=macs|params|latency: the exact params table, the latency table file and its
refusals, the one-line errors of the CLI, and a short params-constrained search."""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

import partialnet
from conftest import REPO, assert_user_error, full_depth, run_cli
from partialnet.errors import UserError
from partialnet.measure.count import count
from partialnet.search.constraint import check_reachable, resolve_target
from partialnet.search.cost_model import build_cost_table
from partialnet.search.latency_table import LatencyTable, measure_latency_table
from partialnet.search.supernet import DEFAULT_CANDIDATES, layer_specs
from test_search_cli import FAST_SEARCH

KW = dict(num_classes=10, small_input=True)
SIZE = 32


def _model_and_specs(name="partialnet_t0", candidates=DEFAULT_CANDIDATES):
    model = partialnet.create_model(name, **KW)
    return model, layer_specs(model, list(candidates))


@pytest.mark.parametrize("name", ["partialnet_t0", "fasternet_t0"])
def test_params_table_equals_count_of_static_models(name, monkeypatch):
    reference = count(partialnet.create_model(name, **KW), SIZE)["params"]
    model, specs = _model_and_specs(name)

    def no_trace(*args, **kwargs):
        raise AssertionError("a params table traced a model for its MACs")

    monkeypatch.setattr("fvcore.nn.FlopCountAnalysis", no_trace)  # parameters need no trace
    cost = build_cost_table(model, specs, SIZE, metric="params")
    assert cost.metric == "params" and cost.exact
    assert cost.reference == reference
    rng = random.Random(0)
    options = [[c for c, k in enumerate(s.ks) if k is not None] for s in specs]
    choices = [[o[0] for o in options], [o[-1] for o in options]] + [[rng.choice(o) for o in options] for _ in range(3)]
    for choice in choices:
        ratios = [s.candidates[c] for s, c in zip(specs, choice)]
        counted = count(partialnet.create_model(name, ratios=ratios, **KW), SIZE, macs=False)["params"]
        assert cost.value_of(choice) == counted, choice
    # the generic table keeps the MAC table's names working
    assert cost.min_macs == cost.min_value and cost.macs_of(choices[0]) == cost.value_of(choices[0])


def test_params_budget_resolution_and_range():
    model, specs = _model_and_specs()
    cost = build_cost_table(model, specs, SIZE, metric="params")
    assert resolve_target(cost, None, 1.0) == cost.reference
    assert resolve_target(cost, cost.max_value / 1e6, 0.5) == pytest.approx(cost.max_value)  # the absolute wins
    with pytest.raises(UserError, match=r"params_ratio=0.5 .*not feasible.*M params"):
        resolve_target(cost, None, 0.5)
    with pytest.raises(UserError, match=r"params_target=-1 must be a positive number of M params"):
        resolve_target(cost, -1, None)
    with pytest.raises(UserError, match=r"set search.params_target"):
        resolve_target(cost, None, None)


@pytest.fixture(scope="module")
def small_table():
    model, specs = _model_and_specs()
    table = measure_latency_table(model, specs, model_name="partialnet_t0", model_kwargs=KW, input_size=SIZE,
                                  batch_size=1, threads=1, device="cpu", warmup=1, runs=3)
    return model, specs, table


def test_latency_table_round_trip(tmp_path, small_table):
    model, specs, table = small_table
    path = table.save(tmp_path / "table.json")
    loaded = LatencyTable.load(path)
    assert loaded == table
    data = json.loads(path.read_text())
    for key in ("model", "model_kwargs", "input_size", "candidates", "device", "batch_size", "threads", "torch"):
        assert key in data, key
    assert data["device_type"] == "cpu" and data["threads"] == 1 and data["input_size"] == [3, SIZE, SIZE]
    cost = loaded.cost_table()
    assert cost.metric == "latency" and not cost.exact and cost.meta["device"] == table.device
    # the fixed part is the whole fused model minus its layers: the model as built is predicted exactly
    as_built = [s.reference_index(0.25) for s in specs]
    assert cost.value_of(as_built) == pytest.approx(table.model_ms, rel=1e-9)
    assert all(v is None or v > 0 for row in cost.values for v in row)
    loaded.check_fits("t.json", model="partialnet_t0", model_kwargs=KW, input_size=[3, SIZE, SIZE],
                      candidates=list(DEFAULT_CANDIDATES), specs=specs, device="cpu")
    # a latency budget resolves against the reference (r = 1/4) model and is checked for reach
    target = resolve_target(cost, None, 1.0)
    assert target == pytest.approx(table.reference_ms)
    check_reachable(cost, target, 0.03)


@pytest.mark.parametrize(
    "change,needles",
    [
        (dict(model="fasternet_t0"), ["model", "'partialnet_t0'", "'fasternet_t0'"]),
        (dict(model_kwargs=dict(num_classes=100, small_input=True)), ["model arguments", "10", "100"]),
        (dict(input_size=[3, 64, 64]), ["input size", "32", "64"]),
        (dict(candidates=[0.5, 0.25]), ["candidates", "0.125"]),
        (dict(device="cuda"), ["measured on", "cpu", "'cuda'"]),
    ],
    ids=["model", "kwargs", "input-size", "candidates", "device"],
)
def test_latency_table_for_another_search_is_refused(small_table, change, needles):
    _, specs, table = small_table
    want = dict(model="partialnet_t0", model_kwargs=KW, input_size=[3, SIZE, SIZE],
                candidates=list(DEFAULT_CANDIDATES), specs=specs, device=None)
    want.update(change)
    with pytest.raises(UserError) as err:
        table.check_fits("t.json", **want)
    msg = str(err.value)
    assert "\n" not in msg and "t.json" in msg
    for needle in needles:
        assert needle in msg, (needle, msg)


def _table_cli(args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "partialnet.search.latency_table", *args], cwd=str(REPO), env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # two processes: ~15 s on a busy box
def test_latency_table_cli_writes_a_table_and_refuses_bad_arguments(tmp_path):
    out = tmp_path / "t.json"
    args = ["--model", "partialnet_t0", "--kwarg", "num_classes=10", "--kwarg", "small_input=true",
            "--input-size", "32", "--threads", "1", "--runs", "2", "--out", str(out)]
    proc = _table_cli(args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = LatencyTable.load(out)
    assert table.model_kwargs == KW and table.threads == 1 and table.batch_size == 1
    assert "table file:" in proc.stdout
    bad = _table_cli(["--model", "partialnet_t0", "--kwarg", "oops", "--out", str(tmp_path / "x.json")])
    assert_user_error(bad, "--kwarg", "'oops'", "KEY=VALUE")


@pytest.mark.parametrize(
    "overrides,needles",
    [
        (["search.constraint=energy"], ["search.constraint='energy'", "macs, params, latency"]),
        (["search.constraint=params", "search.params_ratio=0.5"], ["params_ratio=0.5", "not feasible", "M params"]),
        (["search.constraint=params"], ["search.params_target", "params_ratio"]),
        (["search.latency_target_ms=5"], ["search.latency_target_ms", "constraint=macs", "constraint=latency"]),
    ],
    ids=["unknown-constraint", "params-out-of-range", "no-params-budget", "budget-of-another-constraint"],
)
def test_constraint_cli_errors_are_one_line(tmp_path, overrides, needles):
    proc = run_cli("search_dpconv.py", [*FAST_SEARCH, *overrides, f"hydra.run.dir={tmp_path}/s"])
    assert_user_error(proc, *needles)
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.slow  # two processes: ~15 s on a busy box
def test_latency_cli_refuses_a_table_for_another_model_and_an_out_of_range_budget(tmp_path, small_table):
    _, _, table = small_table
    other = LatencyTable(**{**table.__dict__, "model": "fasternet_t0"})
    path = other.save(tmp_path / "other.json")
    proc = run_cli("search_dpconv.py", [*full_depth(FAST_SEARCH), "search.constraint=latency", f"search.latency_table={path}",
                                        "search.latency_ratio=1.0", f"hydra.run.dir={tmp_path}/s"])
    assert_user_error(proc, "other.json", "'fasternet_t0'", "'partialnet_t0'")
    good = table.save(tmp_path / "good.json")
    proc = run_cli("search_dpconv.py", [*full_depth(FAST_SEARCH), "search.constraint=latency", f"search.latency_table={good}",
                                        "search.latency_target_ms=1000", f"hydra.run.dir={tmp_path}/s2"])
    assert_user_error(proc, "latency_target_ms=1000", "not feasible", "ms")
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.slow
def test_params_constrained_search_lands_in_band_without_projection(tmp_path):
    from test_search_loop import SMALL_SEARCH, _compose

    from partialnet.search.search_task import search

    model, specs = _model_and_specs()
    cost = build_cost_table(model, specs, SIZE, metric="params")
    probs = cost.valid().double()
    warm = float(cost.expected(probs / probs.sum(dim=-1, keepdim=True)))
    ratio = 1.08
    target = ratio * cost.reference
    assert cost.min_value < target < cost.max_value and abs(target / warm - 1) > 0.03
    out = tmp_path / "run"
    cfg = _compose([*SMALL_SEARCH, "search.constraint=params", f"search.params_ratio={ratio}",
                    f"paths.output_dir={out}", f"paths.log_dir={tmp_path}"])
    metrics = search(cfg)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    assert metrics["search/projection_used"] == 0.0
    info = yaml.safe_load((out / "ratios.yaml").read_text())
    assert info["constraint"] == "params" and info["target_macs"] is None
    counted = count(partialnet.create_model("partialnet_t0", ratios=info["ratios"], **KW), SIZE)["params"]
    assert counted == info["params"] == info["constraint_value"]
    assert abs(counted / target - 1) <= 0.03, (counted, target)
    assert metrics["search/final_rel_error"] == pytest.approx(counted / target - 1)
    assert torch.isfinite(torch.tensor(metrics["search/final_gmacs"]))
    # per-step logs are named after the constraint and hold millions of parameters
    import csv

    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert "search/expected_gmacs_step" not in rows[0]
    last = [float(r["search/argmax_params_m"]) for r in rows if r.get("search/argmax_params_m")][-1]
    assert last * 1e6 == pytest.approx(counted, rel=1e-6)


@pytest.mark.slow
def test_latency_constrained_search_prints_predicted_and_measured(tmp_path, small_table, capsys):
    """Plumbing: a table file drives the search; the export prints and logs predicted vs measured
    latency of the fused exported model and records the constraint in ratios.yaml."""
    from test_search_loop import SMALL_SEARCH, _compose

    from partialnet.search.search_task import search

    _, _, table = small_table
    path = table.save(tmp_path / "table.json")
    out = tmp_path / "run"
    cfg = _compose([*SMALL_SEARCH, "trainer.max_epochs=2", "search.constraint=latency", f"search.latency_table={path}",
                    "search.latency_ratio=1.0", "search.latency_device=cpu", f"paths.output_dir={out}",
                    f"paths.log_dir={tmp_path}"])
    metrics = search(cfg)
    printed = capsys.readouterr().out
    assert "latency of the exported model (fused, batch 1, 1 threads" in printed and "measured" in printed
    info = yaml.safe_load((out / "ratios.yaml").read_text())
    assert info["constraint"] == "latency" and info["constraint_unit"] == "ms" and info["target_macs"] is None
    choice = [s.candidates.index(r) for s, r in zip(_model_and_specs()[1], info["ratios"])]
    predicted = table.cost_table().value_of(choice)
    assert metrics["search/latency_predicted_ms"] == pytest.approx(predicted)
    assert info["constraint_value"] == pytest.approx(predicted)
    assert info["latency_measured_ms"] > 0
    assert metrics["search/latency_measured_ms"] == pytest.approx(info["latency_measured_ms"])
    assert info["latency_device"] == table.device and info["macs"] > 0
