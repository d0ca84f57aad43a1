"""conf/search.yaml composes like train.yaml (same groups + search/), and its options are all known."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

import partialnet
from partialnet.search.search_task import _SEARCH_KEYS, _check_search_cfg
from partialnet.utils.rundir import register_resolvers

CONF = Path(__file__).resolve().parents[1] / "conf"
register_resolvers()


def _compose(name: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=overrides, return_hydra_config=True)


def test_search_config_has_train_groups_plus_search():
    train, search = _compose("train", []), _compose("search", [])
    assert set(search) - set(train) == {"search"}
    assert search.task_name == "search" and search.hydra.sweep.dir.startswith(str(search.paths.log_dir))
    assert set(search.search) == _SEARCH_KEYS
    _check_search_cfg(OmegaConf.to_container(search.search), int(search.trainer.max_epochs))


@pytest.mark.parametrize("model", [m for m in partialnet.list_models() if m.split("_")[0] in ("partialnet", "patnet", "fasternet")])
def test_search_composes_for_every_searchable_model(model):
    cfg = _compose("search", [f"model={model}", "search.flops_target=0.3", "data=synthetic"])
    assert cfg.model.name == model and cfg.search.flops_target == 0.3
