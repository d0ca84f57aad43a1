"""The DataModule base contract: global batch, deterministic sampling, checkpointable seeds."""
from __future__ import annotations

import types

import pytest
import torch
from torch.utils.data import DistributedSampler

from partialnet.data import SyntheticDataModule
from partialnet.errors import UserError


def _dm(**kw) -> SyntheticDataModule:
    args = dict(num_classes=4, image_size=16, train_size=96, val_size=24, batch_size=16, seed=3)
    args.update(kw)
    return SyntheticDataModule(**args)


def _attach(dm, world: int, rank: int):
    dm.trainer = types.SimpleNamespace(world_size=world, global_rank=rank)
    return dm


def _epoch_batches(loader, epoch):
    loader.sampler.set_epoch(epoch)
    return [(x, y) for x, y in loader]


def test_per_device_batch_from_global_batch():
    dm = _dm(batch_size=16)
    assert dm.per_device_batch_size == 16  # no trainer: world size 1
    _attach(dm, world=4, rank=1)
    assert dm.per_device_batch_size == 4
    loader = dm.train_dataloader()
    assert loader.batch_size == 4
    assert isinstance(loader.sampler, DistributedSampler)
    assert (loader.sampler.num_replicas, loader.sampler.rank) == (4, 1)
    assert loader.drop_last and loader.sampler.drop_last
    x, y = next(iter(loader))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_indivisible_global_batch_is_a_user_error():
    dm = _attach(_dm(batch_size=10), world=4, rank=0)
    with pytest.raises(UserError, match=r"batch_size=10.*world size 4.*multiple of 4") as e:
        dm.train_dataloader()
    assert "\n" not in str(e.value)


def test_too_small_train_set_is_a_user_error():
    with pytest.raises(UserError, match="fewer than the per-device batch"):
        _dm(train_size=8, batch_size=16).train_dataloader()


def test_num_classes_known_before_setup():
    dm = _dm(num_classes=7)
    assert dm.num_classes == 7 and dm.train_dataset is None


def test_setup_is_idempotent():
    dm = _dm()
    dm.setup("fit")
    ds = dm.train_dataset
    dm.setup("validate")
    assert dm.train_dataset is ds


def test_sampler_order_is_a_pure_function_of_seed_and_epoch():
    a, b = _dm().train_dataloader(), _dm().train_dataloader()
    a0, b0 = _epoch_batches(a, 0), _epoch_batches(b, 0)
    a1 = _epoch_batches(a, 1)
    for (xa, ya), (xb, yb) in zip(a0, b0):  # same order AND same augmentation
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
    a.sampler.set_epoch(0)
    order0 = list(a.sampler)
    a.sampler.set_epoch(1)
    order1 = list(a.sampler)
    assert order0 != order1
    assert not all(torch.equal(x0, x1) for (x0, _), (x1, _) in zip(a0, a1))
    other = _dm(seed=4).train_dataloader().sampler
    other.set_epoch(0)
    assert list(other) != order0


def test_ranks_get_disjoint_shards():
    orders = []
    for rank in range(2):
        s = _attach(_dm(batch_size=8), world=2, rank=rank).train_dataloader().sampler
        s.set_epoch(5)
        orders.append(set(s))
    assert not orders[0] & orders[1]


def test_state_dict_round_trip_reproduces_worker_seeds():
    dm = _dm()
    loader = dm.train_dataloader()
    first = [iter(loader)._base_seed for _ in range(2)]
    state = dm.state_dict()
    assert set(state) >= {"train_generator"}
    expected = [iter(loader)._base_seed for _ in range(3)]
    resumed = _dm()
    resumed.load_state_dict(state)
    got = [iter(resumed.train_dataloader())._base_seed for _ in range(3)]
    assert got == expected
    assert got[0] not in first
    # a fresh module starts the stream from the beginning
    assert iter(_dm().train_dataloader())._base_seed == first[0]


def test_rank_checkpoint_state_valid_for_every_rank():
    """Rank 0 writes the checkpoint; rank 1 must continue its own stream from it."""
    r0, r1 = _attach(_dm(batch_size=8), 2, 0), _attach(_dm(batch_size=8), 2, 1)
    for dm in (r0, r1):
        iter(dm.train_dataloader())
    nxt = iter(r1.train_dataloader())._base_seed
    resumed = _attach(_dm(batch_size=8), 2, 1)
    resumed.load_state_dict(r0.state_dict())  # rank 0's state
    assert iter(resumed.train_dataloader())._base_seed == nxt


class _SeedProbe(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.tensor(torch.initial_seed() % (2**62))


def test_worker_seeds_differ_between_ranks():
    seeds = []
    for rank in range(2):
        dm = _attach(_dm(num_workers=1, batch_size=2), world=2, rank=rank)
        dm.train_dataset, dm.val_dataset = _SeedProbe(), _SeedProbe()
        seeds.append(int(next(iter(dm.train_dataloader()))[0]))
    assert seeds[0] != seeds[1]


def test_loaders_do_not_touch_the_global_rng():
    dm = _dm()
    state = torch.get_rng_state()
    for _ in dm.val_dataloader():
        pass
    for _ in dm.train_dataloader():
        pass
    assert torch.equal(torch.get_rng_state(), state)


def test_val_loader_in_order_and_sharded():
    dm = _dm()
    y = torch.cat([b[1] for b in dm.val_dataloader()])
    assert torch.equal(y, dm.val_dataset.labels)
    s = _attach(_dm(batch_size=8), world=2, rank=1).val_dataloader().sampler
    assert isinstance(s, DistributedSampler) and not s.shuffle


def test_bad_arguments_are_user_errors():
    with pytest.raises(UserError, match="batch_size"):
        _dm(batch_size=0)
    with pytest.raises(UserError, match="num_workers"):
        _dm(num_workers=-1)


def test_lightning_fit_sets_epochs_and_checkpoints_generator(tmp_path):
    import pytorch_lightning as pl

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3 * 16 * 16, 4)
            self.seen: dict[int, list[int]] = {}

        def training_step(self, batch, i):
            x, y = batch
            self.seen.setdefault(self.current_epoch, []).extend(y.tolist())
            return torch.nn.functional.cross_entropy(self.fc(x.flatten(1)), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def fit(epochs, ckpt=None):
        model = Tiny()
        dm = _dm()
        trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, use_distributed_sampler=False,
                             logger=False, enable_progress_bar=False, enable_model_summary=False,
                             limit_val_batches=0, default_root_dir=tmp_path,
                             enable_checkpointing=False)
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
        return model, trainer, dm

    m1, t1, dm1 = fit(1)
    t1.save_checkpoint(tmp_path / "e1.ckpt")
    ck = torch.load(tmp_path / "e1.ckpt", weights_only=False)
    assert "train_generator" in ck["SyntheticDataModule"]
    m2, _, _ = fit(2)
    assert m2.seen[0] == m1.seen[0] and m2.seen[1] != m2.seen[0]  # set_epoch was called
    m3, _, _ = fit(2, ckpt=str(tmp_path / "e1.ckpt"))
    assert m3.seen[1] == m2.seen[1]
