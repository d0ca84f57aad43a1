"""The DataModule base every dataset in partialnet derives from.

Contract (``train.py`` and the resume tests rely on it):

* ``batch_size`` is the **global** batch. ``per_device_batch_size = batch_size // world_size``
  where the world size comes from the attached Trainer (1 without one). An indivisible
  batch is a :class:`~partialnet.errors.UserError`.
* ``num_classes`` is known right after ``__init__`` (the model is built from it before
  ``setup()``). Subclasses compute it cheaply and lazily (a constant or a folder count).
* ``setup()`` builds ``train_dataset`` / ``val_dataset`` once, through the subclass hook
  :meth:`ImageClassificationDataModule.build_datasets`.
* The train loader ALWAYS uses ``DistributedSampler(shuffle=True, seed=seed,
  drop_last=True)``, also with one process (the Trainer runs with
  ``use_distributed_sampler=False`` and calls ``sampler.set_epoch(epoch)`` itself), so the
  order of samples is a pure function of ``(seed, epoch, rank)``.
* Worker seeds: every ``iter(train_loader)`` draws one base seed from
  ``self._train_generator``. That generator is seeded from ``seed`` only, so the state
  rank 0 writes into the checkpoint (:meth:`state_dict`) is also the right state for every
  other rank; the rank is mixed into the per-worker seeds by :func:`_seed_worker` instead.
  A resumed run therefore continues the exact worker-seed stream on every rank. (With
  ``persistent_workers=True`` workers keep their RNG across epochs, so resume cannot be
  bit-exact for worker-side randomness; in-memory datasets don't use worker RNG at all.)
* The val loader is in order (``DistributedSampler(shuffle=False)`` with several
  processes, which pads the last few samples as usual) and uses a fresh
  ``torch.Generator().manual_seed(seed)`` on every call, so validation never consumes the
  global RNG.
"""
from __future__ import annotations

import functools
import os
import random
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from partialnet.data.samplers import ResumableDistributedSampler

from partialnet.errors import UserError

#: File extensions read as images (the same set torchvision's ImageFolder accepts).
IMG_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
)

#: Exceptions that mean "this image file can't be decoded" (PIL's UnidentifiedImageError
#: and "image file is truncated" are OSErrors; torchvision.io raises RuntimeError).
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, ValueError, SyntaxError, EOFError, RuntimeError,
)


def repo_root() -> Path:
    """The repository root: the parent of the ``partialnet`` package directory."""
    return Path(__file__).resolve().parent.parent.parent


def default_cache_dir(name: str) -> Path:
    """``$PARTIALNET_CACHE`` or ``~/.cache/partialnet``, then ``name``."""
    base = os.environ.get("PARTIALNET_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "partialnet"
    )
    return Path(base) / name


# --------------------------------------------------------------------------- folders


def find_class_folders(root: str | Path, fix: str = "") -> list[str]:
    """Sorted class-folder names under ``root`` (hidden folders skipped).

    Raises :class:`UserError` if ``root`` is missing, not a directory, or has no class folders.
    """
    root = Path(root)
    fix = f" {fix}" if fix else ""
    if not root.exists():
        raise UserError(f"data root {root} does not exist:{fix or ' set data.root to the dataset directory'}")
    if not root.is_dir():
        raise UserError(f"data root {root} is not a directory:{fix or ' set data.root to the dataset directory'}")
    with os.scandir(root) as it:
        classes = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise UserError(
            f"data root {root} has no class folders (expected {root}/<class>/<image files>):"
            f"{fix or ' put one folder of images per class there, or fix data.root'}"
        )
    return classes


def scan_image_folder(
    root: str | Path,
    classes: Sequence[str] | None = None,
    extensions: Iterable[str] = IMG_EXTENSIONS,
    fix: str = "",
) -> tuple[list[str], list[tuple[str, int]]]:
    """Walk ``root/<class>/**`` and return ``(classes, samples)``, samples sorted per class.

    * missing root / no class folders / a class folder without images → :class:`UserError`;
    * non-image files (by extension) are ignored, with ONE ``warnings.warn`` summary.

    ``classes`` fixes the class list (e.g. the val split must use the train split's classes).
    """
    root = Path(root)
    if classes is None:
        classes = find_class_folders(root, fix)
    elif not root.is_dir():
        raise UserError(f"data directory {root} does not exist:{' ' + fix if fix else ' fix the path'}")
    exts = tuple(e.lower() for e in extensions)
    samples: list[tuple[str, int]] = []
    ignored: list[str] = []
    for idx, cls in enumerate(classes):
        cdir = root / cls
        if not cdir.is_dir():
            raise UserError(
                f"class folder {cdir} is missing (classes are taken from the train split): "
                f"create it with at least one image, or remove that class from the train split"
            )
        found = []
        for dirpath, dirnames, filenames in os.walk(cdir, followlinks=True):
            dirnames.sort()
            for fn in sorted(filenames):
                path = os.path.join(dirpath, fn)
                if fn.lower().endswith(exts):
                    found.append((path, idx))
                else:
                    ignored.append(path)
        if not found:
            raise UserError(
                f"class folder {cdir} has no image files ({', '.join(exts)}): "
                f"add images to it or remove the folder"
            )
        samples.extend(found)
    if ignored:
        warnings.warn(
            f"ignored {len(ignored)} non-image file(s) under {root} (e.g. {ignored[0]}); "
            f"only {', '.join(exts)} files are read",
            stacklevel=2,
        )
    return list(classes), samples


# --------------------------------------------------------------------------- seeding


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integer parts (independent of any global RNG)."""
    ss = np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts])
    return int(ss.generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def _seed_worker(worker_id: int, rank: int = 0) -> None:
    """DataLoader ``worker_init_fn``: mixes the process rank into the worker's seeds.

    Rank 0 keeps PyTorch's defaults (torch/random/numpy seeded from base_seed + worker_id),
    so a single-process run behaves exactly like a plain DataLoader.
    """
    if rank == 0:
        return
    info = torch.utils.data.get_worker_info()
    seed = mix_seed(info.seed, rank)
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def world_and_rank(trainer: Any) -> tuple[int, int]:
    """``(world_size, global_rank)`` of the attached Trainer, or ``(1, 0)`` without one."""
    if trainer is None:
        return 1, 0
    return int(trainer.world_size), int(trainer.global_rank)


# --------------------------------------------------------------------------- datamodule


class ImageClassificationDataModule(pl.LightningDataModule):
    """Base DataModule: global batch, deterministic sampling, checkpointable worker seeds.

    Subclasses implement :meth:`build_datasets` (and set ``_num_classes`` or override
    :meth:`_count_classes`). Datasets return ``(image float[3,H,W], label int64)``.
    """

    def __init__(
        self,
        batch_size: int = 256,
        num_workers: int = 2,
        pin_memory: bool = True,
        persistent_workers: bool = False,
        seed: int = 0,
        image_size: int = 224,
        val_batch_size: int | None = None,
    ):
        super().__init__()
        for name, value in (("batch_size", batch_size), ("image_size", image_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"data.{name}={value!r} is invalid: set it to a positive integer")
        if val_batch_size is not None and (not isinstance(val_batch_size, int) or val_batch_size < 1):
            raise UserError(f"data.val_batch_size={val_batch_size!r} is invalid: set a positive integer or null")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise UserError(f"data.num_workers={num_workers!r} is invalid: set an integer >= 0")
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.seed = int(seed)
        self.image_size = image_size
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self._num_classes: int | None = None
        self._resume_position: tuple[int, int] | None = None  # (epoch, batches done) from a checkpoint
        # Shared by all ranks (see module docstring); drives the DataLoader's worker seeds.
        self._train_generator = torch.Generator()
        self._train_generator.manual_seed(mix_seed(self.seed, 0x5EED))

    # ---- sizes -----------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        if self._num_classes is None:
            self._num_classes = int(self._count_classes())
        return self._num_classes

    def _count_classes(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} must set _num_classes or override _count_classes()")

    @property
    def world_size(self) -> int:
        return world_and_rank(self.trainer)[0]

    @property
    def global_rank(self) -> int:
        return world_and_rank(self.trainer)[1]

    def _per_device(self, global_batch: int, name: str) -> int:
        world = self.world_size
        if global_batch % world:
            lo = max(world, global_batch - global_batch % world)
            raise UserError(
                f"data.{name}={global_batch} (the global batch) is not divisible by the world size "
                f"{world} (devices x nodes): set data.{name} to a multiple of {world}, e.g. {lo}"
            )
        return global_batch // world

    @property
    def per_device_batch_size(self) -> int:
        return self._per_device(self.batch_size, "batch_size")

    @property
    def per_device_val_batch_size(self) -> int:
        if self.val_batch_size is None:
            return self.per_device_batch_size
        return self._per_device(self.val_batch_size, "val_batch_size")

    # ---- datasets --------------------------------------------------------------------
    def build_datasets(self) -> tuple[Dataset, Dataset]:
        """Subclass hook: return ``(train_dataset, val_dataset)``."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is None or self.val_dataset is None:
            self.train_dataset, self.val_dataset = self.build_datasets()

    # ---- loaders ---------------------------------------------------------------------
    def _loader(self, dataset: Dataset, batch_size: int, sampler, drop_last: bool,
                generator: torch.Generator, rank: int) -> DataLoader:
        workers = self.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=workers,
            pin_memory=bool(self.pin_memory and torch.cuda.is_available()),
            persistent_workers=bool(self.persistent_workers and workers > 0),
            generator=generator,
            worker_init_fn=functools.partial(_seed_worker, rank=rank) if workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        world, rank = world_and_rank(self.trainer)
        per_device = self.per_device_batch_size
        ds = self.train_dataset
        sampler = ResumableDistributedSampler(
            ds, num_replicas=world, rank=rank, shuffle=True, seed=self.seed, drop_last=True
        )
        if self._resume_position is not None:  # a mid-epoch checkpoint: skip what was consumed
            epoch, batches = self._resume_position
            sampler.resume_at(epoch, batches * per_device)
            self._resume_position = None
        if len(sampler) < per_device:
            raise UserError(
                f"the train set has {len(ds)} samples, {len(sampler)} per device, fewer than the "
                f"per-device batch {per_device} (data.batch_size={self.batch_size}, world size "
                f"{world}): lower data.batch_size or use a bigger dataset"
            )
        return self._loader(ds, per_device, sampler, True, self._train_generator, rank)

    def val_dataloader(self) -> DataLoader:
        self.setup("validate")
        world, rank = world_and_rank(self.trainer)
        ds = self.val_dataset
        sampler = (
            DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=False, drop_last=False)
            if world > 1 else None
        )
        gen = torch.Generator()
        gen.manual_seed(self.seed)
        return self._loader(ds, self.per_device_val_batch_size, sampler, False, gen, rank)

    # ---- checkpoint state ------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {"train_generator": self._train_generator.get_state(), "seed": self.seed}
        trainer = self.trainer
        loop = getattr(trainer, "fit_loop", None)
        if loop is not None and loop.epoch_progress.current.started > loop.epoch_progress.current.processed:
            # A checkpoint inside an epoch: the batches *processed* (optimizer stepped) so far. (A
            # checkpoint taken in on_train_batch_end has not counted its batch as "completed".)
            state["position"] = (int(loop.epoch_progress.current.started) - 1,
                                 int(loop.epoch_loop.batch_progress.current.processed))
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("position") is not None:
            self._resume_position = tuple(state_dict["position"])
        if "train_generator" in state_dict:
            self._train_generator.set_state(state_dict["train_generator"])
        if "seed" in state_dict and int(state_dict["seed"]) != self.seed:
            warnings.warn(
                f"the checkpoint's data seed {state_dict['seed']} differs from data.seed={self.seed}; "
                f"sample order follows data.seed={self.seed}",
                stacklevel=2,
            )
