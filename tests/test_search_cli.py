"""search_dpconv.py end to end: search -> ratios.yaml (a 2-target sweep) -> train.py retrain."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml

import partialnet
from conftest import FAST_DEPTHS, FAST_TRAIN, full_depth, run_cli
from partialnet.measure import count


# The brief's tiny search: PartialNet-T0 (small-input stem) on 32x32 synthetic data.
FAST_SEARCH = [
    "data=synthetic",
    "data.image_size=32",
    "data.train_size=128",
    "data.val_size=64",
    "data.batch_size=32",
    "model=partialnet_t0",
    "model.small_input=true",
    "logger=csv",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=2",
    "search.warmup_epochs=1",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "callbacks.progress_bar=null",
    FAST_DEPTHS,
]


def _ratio_file(run: Path) -> dict:
    return yaml.safe_load((run / "ratios.yaml").read_text())


# make test-all (about 20 s). The fast tier covers its parts: a search run through the CLI and its
# ratios file (test_search_resume.py, test_search_ratios_contract.py), train.py on a ratios file
# (test_errors.py), a file rebuilt, fused and exported (test_search_mlp_space.py), a Hydra sweep's
# separate runs (test_cli.py).
@pytest.mark.slow
def test_search_sweep_then_retrain_rebuilds_each_file(tmp_path):
    """A 2-job sweep (flops_ratio 0.95 and 1.15: one ratios.yaml each), then both retrained by train.py.

    Plumbing only: with 4 search steps the exported file may come from the projection onto the
    band (``search/projection_used``). That the search itself meets a budget is tested on the real
    loop in ``test_search_loop.py``."""
    # one search epoch each, no warm-up (plumbing: the logits move from the first step on)
    one_epoch = [a for a in full_depth(FAST_SEARCH) if not a.startswith(("trainer.max_epochs=", "search.warmup_epochs="))]
    proc = run_cli("search_dpconv.py", ["-m", *one_epoch, "trainer.max_epochs=1", "search.warmup_epochs=0",
                                        "search.flops_ratio=0.95,1.15", f"paths.log_dir={tmp_path}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.parent for p in tmp_path.glob("search/multiruns/*/*/ratios.yaml"))
    assert [r.name for r in runs] == ["0", "1"]
    assert proc.stdout.count("ratios file: ") == 2 and proc.stdout.count("ratios plot: ") == 2
    files = []
    for run, ratio in zip(runs, (0.95, 1.15)):
        info = _ratio_file(run)
        assert (run / "ratios.png").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
        assert info["model"] == "partialnet_t0" and info["model_kwargs"] == {"num_classes": 10, "small_input": True}
        assert len(info["ratios"]) == 13 and info["input_size"] == [3, 32, 32]
        assert abs(info["macs"] / info["target_macs"] - 1) <= 0.03
        assert len(info["config_hash"]) == 16
        header = next(csv.reader(open(run / "metrics.csv")))
        for col in ("search/tau", "search/expected_gmacs_step", "search/lambda_scale", "search/expected_gmacs_epoch",
                    "arch/l00_p0.25",
                    "arch/l12_ratio", "search/argmax_gmacs", "search/final_gmacs", "search/projection_used", "val/acc1"):
            assert col in header, col
        files.append(run / "ratios.yaml")
    assert _ratio_file(runs[0])["target_macs"] < _ratio_file(runs[1])["target_macs"]
    assert _ratio_file(runs[0])["config_hash"] != _ratio_file(runs[1])["config_hash"]

    sweep = ",".join(f"'{f}'" for f in files)
    proc = run_cli("train.py", ["-m", *full_depth(FAST_TRAIN), "model.small_input=true", f"model.ratios={sweep}",
                                f"paths.log_dir={tmp_path}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    trained = sorted(p.parent.parent for p in tmp_path.glob("train/multiruns/*/*/checkpoints/last.ckpt"))
    assert len(trained) == 2
    for run, ratios_file in zip(trained, files):
        info = _ratio_file(ratios_file.parent)
        spec = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["partialnet"]["model_spec"]
        assert Path(spec["kwargs"]["ratios"]) == ratios_file
        model = partialnet.create_model(spec["name"], **spec["kwargs"])
        assert [s.ratio for s in model.searchable_splits()] == info["ratios"]
        macs = count(model, 32)["macs"]
        assert macs == info["macs"] and abs(macs / info["target_macs"] - 1) <= 0.03
