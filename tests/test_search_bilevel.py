"""Bilevel search (``search.arch_split``): the logits learn on data the weights never train on."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import TensorDataset

from partialnet.errors import UserError
from partialnet.search.bilevel import ArchSplitDataset, attach_arch_split, split_indices
from test_search_loop import _compose

# PartialNet-T0 (small-input stem) on 32 px synthetic data: one warm-up epoch, one search epoch.
TINY = ["data=synthetic", "data.image_size=32", "data.train_size=80", "data.val_size=16", "data.batch_size=16",
        "model=partialnet_t0", "model.small_input=true", "logger=csv", "trainer.accelerator=cpu",
        "trainer.max_epochs=2", "search.warmup_epochs=1", "trainer.num_sanity_val_steps=0",
        "trainer.enable_progress_bar=false", "callbacks.progress_bar=null", "callbacks.best_checkpoint=null",
        "trainer.limit_val_batches=1", "search.arch_lr=0.1", "search.arch_split=0.25",
        "+callbacks.probe._target_=test_search_bilevel.FirstSearchStep"]

SEEN: dict = {}


class Labelled(TensorDataset):
    def __init__(self, n: int, classes: int):
        self.labels = torch.arange(n) % classes
        super().__init__(torch.arange(n).float(), self.labels)


def test_split_is_disjoint_complete_stratified_and_deterministic():
    ds = Labelled(200, 4)
    w, a = split_indices(ds, 0.25, seed=3)
    assert len(np.intersect1d(w, a)) == 0 and sorted(np.concatenate([w, a]).tolist()) == list(range(200))
    assert np.bincount(ds.labels.numpy()[a]).tolist() == [12, 12, 12, 12] or np.bincount(ds.labels.numpy()[a]).tolist() == [13, 13, 13, 13]
    w2, a2 = split_indices(ds, 0.25, seed=3)
    assert np.array_equal(a, a2) and not np.array_equal(a, split_indices(ds, 0.25, seed=4)[1])

    pairs = ArchSplitDataset(ds, 0.25, seed=3)
    assert len(pairs) == len(w)
    seen_w, seen_a = set(), set()
    for i in range(len(pairs)):
        x_w, y_w, x_a, y_a = pairs[i]
        seen_w.add(int(x_w)), seen_a.add(int(x_a))
        assert int(y_w) == int(x_w) % 4 and int(y_a) == int(x_a) % 4
    assert seen_w == set(w.tolist()) and seen_a == set(a.tolist())  # every sample of both parts is served
    assert torch.equal(pairs.labels, ds.labels[torch.from_numpy(w)])


def test_split_without_labels_and_empty_parts():
    plain = TensorDataset(torch.arange(10).float())
    w, a = split_indices(plain, 0.3, seed=0)
    assert len(a) == 3 and len(w) == 7
    with pytest.raises(UserError, match="arch_split=0.01 leaves an empty part"):
        split_indices(plain, 0.01, seed=0)


def test_attach_refuses_bad_fractions_and_own_loaders():
    from partialnet.data.synthetic import SyntheticDataModule

    dm = SyntheticDataModule(image_size=8, train_size=100, val_size=4, batch_size=4)
    for bad in (0.0, 1.0, -0.2):
        with pytest.raises(UserError, match=f"search.arch_split={bad}"):
            attach_arch_split(dm, bad, 0)

    class OwnLoader(SyntheticDataModule):
        def train_dataloader(self):
            raise AssertionError

    with pytest.raises(UserError, match="OwnLoader has its own loader"):
        attach_arch_split(OwnLoader(image_size=8, train_size=20, val_size=4, batch_size=4), 0.2, 0)
    attach_arch_split(dm, 0.2, 0)
    dm.setup("fit")
    assert isinstance(dm.train_dataset, ArchSplitDataset) and len(dm.train_dataset) == 80
    assert len(next(iter(dm.train_dataloader()))) == 4
    pairs, inner = dm.train_dataset, dm.train_dataset.dataset  # the batched path serves the right samples
    got = pairs.__getitems__([0, 5, 70])
    assert [int(g[1]) for g in got] == [int(inner.labels[pairs.w_idx[i]]) for i in (0, 5, 70)]
    assert [int(g[3]) for g in got] == [int(inner.labels[pairs.a_idx[i % len(pairs.a_idx)]]) for i in (0, 5, 70)]


class FirstSearchStep(pl.Callback):
    """Replaces the architecture half of each search batch with noise (``SEEN['scramble']``) and records
    the weights and the logits after the first search step."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        assert len(batch) == 4
        if module.is_searching() and SEEN.get("scramble"):
            batch[2].copy_(torch.randn_like(batch[2]))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if module.is_searching() and "weights" not in SEEN:
            SEEN["weights"] = {k: v.detach().clone() for k, v in module.model.named_parameters()}
            SEEN["logits"] = module.arch_logits.detach().clone()


def _first_search_step(tmp_path: Path, scramble: bool) -> dict:
    from partialnet.search.search_task import search

    SEEN.clear()
    SEEN["scramble"] = scramble
    out = tmp_path / ("scrambled" if scramble else "plain")
    search(_compose([*TINY, f"paths.output_dir={out}", f"paths.log_dir={tmp_path}"]))
    return dict(SEEN)


@pytest.mark.slow
def test_logits_learn_from_the_arch_part_only_and_weights_from_the_weight_part(tmp_path):
    """Same seeds, the architecture part of the batch replaced by noise: after the first search step
    the weights are bit-identical (they never saw that part) and the logits are not (they did)."""
    plain = _first_search_step(tmp_path, scramble=False)
    scrambled = _first_search_step(tmp_path, scramble=True)
    assert plain["weights"].keys() == scrambled["weights"].keys()
    for k, v in plain["weights"].items():
        assert torch.equal(v, scrambled["weights"][k]), k
    assert torch.count_nonzero(plain["logits"]) > 0
    assert not torch.equal(plain["logits"], scrambled["logits"])


@pytest.mark.slow
def test_bilevel_search_under_ddp_two_processes(tmp_path):
    """2 gloo processes: the logits' gradient (autograd.grad, outside DDP's hooks) is averaged over
    the ranks, so both ranks hold the same logits and the run exports one ratios.yaml."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", WANDB_MODE="disabled",
               PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO)]))
    env.pop("PARTIALNET_RUN_NAME", None)
    args = [a for a in TINY if "probe" not in a and not a.startswith("trainer.accelerator")] + [
        "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu", "data.train_size=160", "data.batch_size=32",
        "logger=csv", f"paths.log_dir={tmp_path}", "run_name=ddp", "+callbacks.ranks._target_=test_search_bilevel.SaveLogits"]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(REPO / "search_dpconv.py"), *args], cwd=str(REPO), env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = tmp_path / "search" / "runs" / "ddp"
    assert (run / "ratios.yaml").is_file()
    logits = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]["arch_logits"]
    assert torch.count_nonzero(logits) > 0
    per_rank = [torch.load(run / f"logits_rank{r}.pt") for r in (0, 1)]
    assert torch.equal(per_rank[0], per_rank[1]) and torch.equal(per_rank[0], logits)


class SaveLogits(pl.Callback):
    """Each rank writes its architecture logits at the end of the fit."""

    def on_train_end(self, trainer, module):
        torch.save(module.arch_logits.detach().cpu(), Path(trainer.default_root_dir) / f"logits_rank{trainer.global_rank}.pt")


class ForwardArchitectures(pl.Callback):
    """Pins the logits on each row's first valid candidate (+30: every Gumbel sample picks it) and
    records the architecture of every training forward of the search epochs, in order."""

    def on_train_start(self, trainer, module):
        with torch.no_grad():
            first = module.arch_valid.float().argmax(dim=-1)
            module.arch_logits.zero_().scatter_(1, first[:, None], 30.0)
        for group in module.optimizers()[1].optimizer.param_groups:
            group["lr"] = 1e-12  # the logits stay pinned
        SEEN["pinned"] = first.tolist()
        SEEN["forwards"] = []
        module.model.register_forward_pre_hook(
            lambda *_: SEEN["forwards"].append([m.arch_index for m in module._masked]) if module.is_searching() and module.training else None)


@pytest.mark.parametrize("sampling", ["uniform", pytest.param("gumbel", marks=pytest.mark.slow)])
def test_weight_sampling_uniform_trains_the_weights_on_uniform_paths(tmp_path, sampling):
    """Logits pinned on one architecture: the logits' forward (the first of each bilevel step) always
    runs it; with search.weight_sampling=uniform the weights' forward (the second) runs other
    candidates too, with gumbel it runs the pinned one as well."""
    from partialnet.search.search_task import search

    SEEN.clear()
    args = [a for a in TINY if "probe" not in a] + [
        f"search.weight_sampling={sampling}", "+callbacks.probe._target_=test_search_bilevel.ForwardArchitectures",
        f"paths.output_dir={tmp_path / 'out'}", f"paths.log_dir={tmp_path}", "trainer.limit_train_batches=3"]
    search(_compose(args))
    forwards, pinned = SEEN["forwards"], SEEN["pinned"]
    assert len(forwards) == 6  # 3 search steps x (logits' forward, weights' forward)
    assert all(f == pinned for f in forwards[0::2])
    off_pin = sum(a != b for f in forwards[1::2] for a, b in zip(f, pinned))
    if sampling == "uniform":
        assert off_pin >= len(pinned)  # 3 uniform draws over >= 2 candidates per row: ~half of them elsewhere
    else:
        assert off_pin == 0


def test_weight_sampling_uniform_needs_a_bilevel_search():
    from partialnet.search.search_task import _check_search_cfg

    s = dict(_compose([]).search)
    s.update(weight_sampling="uniform", arch_split=0.0)
    with pytest.raises(UserError, match="weight_sampling=uniform needs a bilevel search"):
        _check_search_cfg(s, 3)
    s.update(weight_sampling="often")
    with pytest.raises(UserError, match="search.weight_sampling='often'; use gumbel or uniform"):
        _check_search_cfg(s, 3)
