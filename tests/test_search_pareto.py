"""``python -m partialnet.search.pareto``: a sweep's retrained runs -> one table, one front, one plot."""
from __future__ import annotations

import csv

import torch

import partialnet
from conftest import assert_user_error, run_module
from partialnet.measure import count
from partialnet.search.pareto import collect, main, pareto_front


def _fake_run(root, name, ratios, acc):
    """A run dir as train.py leaves it: checkpoints/last.ckpt with the model spec, metrics.csv."""
    run = root / name
    (run / "checkpoints").mkdir(parents=True)
    spec = {"name": "partialnet_t0", "kwargs": {"num_classes": 10, "small_input": True, "ratios": ratios}}
    torch.save({"state_dict": {}, "partialnet": {"model_spec": spec, "image_size": 32}}, run / "checkpoints" / "last.ckpt")
    with open(run / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerows([["epoch", "step", "val/acc1"], [0, 10, acc - 5], [1, 20, acc]])
    return run


def test_collects_counts_and_marks_the_front(tmp_path):
    small, big = [0.0625] * 13, [0.5] * 13
    _fake_run(tmp_path, "cheap_good", small, 60.0)
    _fake_run(tmp_path, "dear_better", big, 70.0)
    _fake_run(tmp_path, "dear_worse", big, 55.0)  # dominated by both others
    rows = collect([tmp_path])
    assert [r["top1"] for r in rows][0] == 60.0  # sorted by MACs, the last val/acc1 of each run
    want = count(partialnet.create_model("partialnet_t0", num_classes=10, small_input=True, ratios=small), 32)["macs"]
    assert rows[0]["macs"] == want and rows[0]["macs"] < rows[1]["macs"]
    front = pareto_front(rows)
    assert {rows[i]["run"].rsplit("/", 1)[-1] for i in front} == {"cheap_good", "dear_better"}

    assert main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "pareto.md").read_text()
    assert text.count("| *") == 2 and "dear_worse" in text
    assert (tmp_path / "out" / "pareto.png").stat().st_size > 1000
    assert len(list(csv.DictReader(open(tmp_path / "out" / "pareto.csv")))) == 3


def test_no_checkpoints_is_one_line(tmp_path):
    proc = run_module("partialnet.search.pareto", [str(tmp_path)])
    assert_user_error(proc, "no checkpoints/last.ckpt", str(tmp_path))
