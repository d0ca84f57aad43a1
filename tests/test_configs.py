"""Every config composes; every registered model has a model config; experiments build."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

import partialnet
from partialnet.utils.rundir import register_resolvers

CONF = Path(__file__).resolve().parents[1] / "conf"
register_resolvers()


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


def _compose(config_name: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides, return_hydra_config=True)


def test_every_registered_model_has_a_config():
    assert set(partialnet.list_models()) <= set(_options("model"))
    assert set(_options("model")) <= set(partialnet.list_models())


@pytest.mark.parametrize("group", ["data", "optim", "sched", "aug", "ema", "trainer", "logger", "callbacks", "model"])
def test_every_group_option_composes(group):
    for opt in _options(group):
        cfg = _compose("train", [f"{group}={opt}"])
        OmegaConf.resolve(cfg.trainer)  # no dangling interpolation in what the trainer gets
        assert cfg.get(group) is not None or opt == "none"


@pytest.mark.parametrize("exp", _options("experiment"))
def test_every_experiment_composes_and_is_consistent(exp):
    cfg = _compose("train", [f"experiment={exp}", "data.root=/nonexistent"])
    assert cfg.model.name in partialnet.list_models()
    assert cfg.data.batch_size > 0
    if exp.split("_")[0] in ("partialnet", "fasternet"):
        # paper recipe: lr = 0.001 * global batch / 1024, 300 epochs, 20 warm-up epochs
        assert cfg.optim.base_lr == 0.001 and cfg.optim.ref_batch_size == 1024
        assert cfg.trainer.max_epochs == 300 and cfg.sched.warmup_epochs == 20
        assert list(map(list, cfg.multiscale)) == [[0, 192], [280, 224]]


def test_recipe_values_match_the_paper_table():
    t0 = _compose("train", ["experiment=partialnet_t0"])
    m = _compose("train", ["experiment=fasternet_m"])
    assert (t0.optim.weight_decay, t0.aug.mixup, t0.data.batch_size) == (0.005, 0.05, 4096)
    assert (m.optim.weight_decay, m.aug.mixup, m.trainer.gradient_clip_val, m.data.batch_size) == (0.05, 0.5, 1.0, 2048)
    assert m.model.drop_path_rate == 0.2 and m.aug.auto_augment == "rand-m7-mstd0.5-inc1"


def test_default_job_is_the_demo():
    cfg = _compose("train", [])
    assert cfg.data._target_.endswith("FashionMNISTDataModule") and cfg.model.name == "partialnet_t0"
    demo = _compose("train", ["experiment=demo"])  # the default is experiment=demo, nothing else
    without_hydra = lambda c: {k: v for k, v in c.items() if k != "hydra"}  # noqa: E731 (overrides differ)
    assert without_hydra(cfg) == without_hydra(demo) and not cfg.model.small_input
    assert cfg.trainer.max_epochs != 300 and cfg.channels_last
    cfg = _compose("train", ["experiment=partialnet_t0"])  # another experiment replaces the demo's values
    assert cfg.trainer.max_epochs == 300 and cfg.model.small_input is None


def test_eval_config_composes():
    cfg = _compose("eval", ["ckpt=x.ckpt"])
    assert cfg.ckpt == "x.ckpt" and cfg.get("data") is None
    cfg = _compose("eval", ["ckpt=x.ckpt", "data=cifar10"])
    assert cfg.data._target_.endswith("CIFAR10DataModule")


def test_run_dirs_are_unique_and_named_runs_are_stable(monkeypatch):
    from partialnet.utils import rundir

    monkeypatch.delenv(rundir.RUN_NAME_ENV, raising=False)
    for k in ("SLURM_JOB_ID", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(k, raising=False)
    a = rundir.run_name(None)
    assert rundir.run_name(None) == a  # stable within a process (and its children)
    monkeypatch.delenv(rundir.RUN_NAME_ENV)
    assert rundir.run_name(None) != a  # a new process gets a new dir
    assert rundir.run_name("my run") == "my_run"
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    assert rundir.run_name(None) == "slurm-1234"
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    assert rundir.run_name(None) == "torchrun-abc"


@pytest.mark.parametrize("data", _options("data"))
def test_the_default_experiment_fits_every_data_option(data):
    """experiment=demo is applied by default: it must not add keys a data module does not take."""
    import inspect

    from hydra.utils import get_class

    cfg = _compose("train", [f"data={data}"])
    params = inspect.signature(get_class(cfg.data._target_).__init__).parameters
    assert set(cfg.data) - {"_target_"} <= set(params), set(cfg.data) - set(params)


def test_slurm_launcher_composes_with_one_task_per_gpu():
    cfg = _compose("train", ["hydra/launcher=submitit_slurm", "trainer=ddp_multinode", "trainer.devices=4"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == 4 and launcher.gpus_per_node == 4 and launcher.nodes == 2
