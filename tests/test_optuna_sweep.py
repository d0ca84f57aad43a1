"""hparams_search=optuna (hydra/sweeper=optuna): a Bayesian sweep over split ratio, lr and weight
decay; two trials on synthetic data give one run dir each, with the sampled values."""
from __future__ import annotations

import pytest
import yaml

from conftest import FAST_TRAIN, run_cli

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")


@pytest.mark.slow
def test_optuna_two_trials_two_run_dirs(tmp_path):
    proc = run_cli("train.py", ["-m", *FAST_TRAIN, "hparams_search=optuna", "hydra.sweeper.n_trials=2",
                                "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
                                f"paths.log_dir={tmp_path}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p for p in tmp_path.glob("train/multiruns/*/*") if p.is_dir())
    assert [j.name for j in jobs] == ["0", "1"]
    sampled = []
    for job in jobs:
        assert (job / "checkpoints" / "last.ckpt").is_file()
        cfg = yaml.safe_load((job / "config_resolved.yaml").read_text())
        sampled.append((cfg["model"]["split_ratio"], cfg["optim"]["base_lr"], cfg["optim"]["weight_decay"]))
        assert cfg["model"]["split_ratio"] in (0.125, 0.25, 0.5) and 1e-4 <= cfg["optim"]["base_lr"] <= 1e-2
    assert sampled[0] != sampled[1]
    results = yaml.safe_load(next(tmp_path.glob("train/multiruns/*/optimization_results.yaml")).read_text())
    assert results["name"] == "optuna" and "best_value" in results


def test_optuna_config_composes_with_the_search_space():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from conftest import CONF

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("train", overrides=["hparams_search=optuna"], return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    assert "OptunaSweeper" in cfg.hydra.sweeper._target_ and cfg.hydra.sweeper.direction == "maximize"
    assert set(cfg.hydra.sweeper.params) == {"model.split_ratio", "optim.base_lr", "optim.weight_decay"}
