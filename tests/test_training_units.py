"""Unit tests of the training pieces: LR scaling, schedule, weight-decay groups, multi-scale,
atomic checkpoint writes, the one-line CLI error formatting."""
from __future__ import annotations

import copy

import math
import os

import pytest
import torch

from partialnet.errors import UserError
from partialnet.training.checkpoint_file import atomic_torch_save, load_checkpoint_file
from partialnet.training.multiscale import max_resolution, resolution_at, validate_schedule
from partialnet.training.optim import WarmupCosine, build_optimizer, build_scheduler, scaled_lr


def test_lr_scales_with_global_batch():
    assert scaled_lr(0.001, 4096, 1024) == pytest.approx(0.004)
    assert scaled_lr(0.001, 2048, 1024) == pytest.approx(0.002)
    with pytest.raises(UserError, match="base_lr"):
        scaled_lr(0.0, 256, 1024)


def test_warmup_cosine_is_a_pure_function_of_the_step():
    f = WarmupCosine(lr=1.0, total_steps=100, warmup_steps=10, warmup_lr=0.0, min_lr=0.1)
    assert f.lr_at(0) == 0.0 and f.lr_at(5) == pytest.approx(0.5) and f.lr_at(10) == pytest.approx(1.0)
    assert f.lr_at(55) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f.lr_at(100) == pytest.approx(0.1) and f.lr_at(1000) == pytest.approx(0.1)
    assert all(f.lr_at(s) >= f.lr_at(s + 1) for s in range(10, 100))


def test_scheduler_steps_per_iteration_and_resumes_exactly():
    sched_cfg = {"name": "warmup_cosine", "warmup_epochs": 1, "warmup_lr": 0.0, "min_lr": 0.0}
    total, per_epoch = 20, 5

    def fresh():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
        return opt, build_scheduler(opt, sched_cfg, 1.0, total, per_epoch)

    def run(opt, sched, steps):
        lrs = []
        for _ in range(steps):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return lrs

    opt, sched = fresh()
    full = run(opt, sched, total)
    f = WarmupCosine(lr=1.0, total_steps=total, warmup_steps=per_epoch, warmup_lr=0.0, min_lr=0.0)
    assert full == pytest.approx([f.lr_at(s) for s in range(total)])  # one scheduler step per iteration
    assert full[:per_epoch + 1] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    # interrupted after 8 steps: a fresh optimizer and scheduler restored from the state dicts
    # continue exactly where the uninterrupted run went
    opt, sched = fresh()
    head = run(opt, sched, 8)
    state = (opt.state_dict(), sched.state_dict())
    opt2, sched2 = fresh()
    opt2.load_state_dict(state[0])
    sched2.load_state_dict(state[1])
    tail = run(opt2, sched2, total - 8)
    assert head + tail == pytest.approx(full)
    assert sched2.last_epoch == total


def test_no_weight_decay_on_norm_and_bias_by_default():
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    opt = build_optimizer(m, {"name": "adamw", "weight_decay": 0.05}, 1e-3)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(m[0].weight), id(m[2].weight)}
    opt = build_optimizer(m, {"name": "adamw", "weight_decay": 0.05, "decay_norm_bias": True}, 1e-3)
    assert sum(len(g["params"]) for g in opt.param_groups if g["weight_decay"] > 0) == 6
    with pytest.raises(UserError, match="optim.name"):
        build_optimizer(m, {"name": "lamb"}, 1e-3)


def test_adamw_runs_fused_with_the_loop_update():
    """AdamW takes the fused kernel on CPU fp32 parameters and updates them as the per-parameter loop does."""
    torch.manual_seed(0)
    # (no bias right before a norm layer: its gradient is rounding noise, which Adam scales up to full steps)
    m = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.GELU(), torch.nn.LayerNorm(4), torch.nn.Linear(4, 3))
    ref = copy.deepcopy(m)
    opt = build_optimizer(m, {"name": "adamw", "weight_decay": 0.05}, 1e-2)
    opt_ref = build_optimizer(ref, {"name": "adamw", "weight_decay": 0.05}, 1e-2)
    assert all(g["fused"] for g in opt.param_groups)
    for g in opt_ref.param_groups:
        g["fused"] = False
    before = [p.detach().clone() for p in m.parameters()]
    x = torch.randn(8, 5)
    for _ in range(3):
        for model, o in ((m, opt), (ref, opt_ref)):
            o.zero_grad()
            model(x).square().mean().backward()
            o.step()
    for a, b, start in zip(m.parameters(), ref.parameters(), before):
        torch.testing.assert_close(a, b)
        assert not torch.equal(a, start)
    assert not build_optimizer(m.double(), {"name": "adamw"}, 1e-2).param_groups[0]["fused"]


def test_multiscale_schedule():
    sched = [[0, 192], [280, 224]]
    assert [resolution_at(e, sched, 224) for e in (0, 279, 280, 299)] == [192, 192, 224, 224]
    assert resolution_at(5, None, 160) == 160 and max_resolution(sched, 100) == 224
    for bad in ([[1, 192]], [[0, 192], [0, 224]], [[0, -1]]):
        with pytest.raises(UserError):
            validate_schedule(bad)


def test_module_resizes_batches_by_epoch():
    from partialnet.training.classifier import ClassificationModule

    seen = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 4)

        def forward(self, x):
            seen.append(x.shape[-1])
            return self.fc(x.mean((2, 3)))

    mod = ClassificationModule(Probe(), 4, {"name": "adamw", "base_lr": 1e-3, "ref_batch_size": 1024},
                               {"name": "constant"}, image_size=32, multiscale=[[0, 16], [2, 32]])
    for epoch, want in ((0, 16), (1, 16), (2, 32)):
        type(mod).current_epoch = property(lambda self, e=epoch: e)
        assert mod.current_resolution() == want
        x, target = mod.prepare_train_batch((torch.randn(2, 3, 32, 32), torch.tensor([0, 1])))
        assert x.shape[-2:] == (want, want) and target.tolist() == [0, 1]
    del type(mod).current_epoch


def test_atomic_save_leaves_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"state_dict": {"w": torch.ones(3)}}, path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        atomic_torch_save({"state_dict": {"w": torch.zeros(3)}}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # temp file cleaned up
    assert torch.equal(load_checkpoint_file(path)["state_dict"]["w"], torch.ones(3))
    assert oct(os.stat(path).st_mode & 0o777) != oct(0o600)


def test_truncated_checkpoint_is_a_user_error(tmp_path):
    path = tmp_path / "c.ckpt"
    atomic_torch_save({"state_dict": {"w": torch.ones(1000)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated"):
        load_checkpoint_file(path)


def test_cli_error_formatting():
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import MissingConfigException

    from partialnet.utils.cli import _one_line

    # the text Hydra really raises for an unknown option of a config group
    conf = Path(__file__).resolve().parents[1] / "conf"
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"), \
                pytest.raises(MissingConfigException) as e:
            compose(config_name="train", overrides=["model=partialnet_t9"])
    finally:
        GlobalHydra.instance().clear()
    models = sorted(p.stem for p in (conf / "model").glob("*.yaml"))
    assert _one_line(str(e.value)) == f"Could not find 'model/partialnet_t9'; available: {', '.join(models)}"
    assert "\n" not in _one_line("line one\nline two") and _one_line("a\n\n  b\tc") == "a; b c"
