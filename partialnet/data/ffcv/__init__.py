"""FFCV data pipeline: a ``.beton`` writer (CLI) and a distributed-aware LightningDataModule.

Write a dataset once::

    python -m partialnet.data.ffcv write --src /data/in1k/train --out /data/in1k_train.beton
    python -m partialnet.data.ffcv write --src /data/in1k/val --out /data/in1k_val.beton
    python -m partialnet.data.ffcv write --src cifar10:../shared/data/cifar10-train.tar.gz --out c10.beton
    python -m partialnet.data.ffcv write --src fashion_mnist --split test --out fm_test.beton
    python -m partialnet.data.ffcv info /data/in1k_train.beton

then train with ``data=imagenet_ffcv data.train_beton=... data.val_beton=...``.

Modules: :mod:`~partialnet.data.ffcv.sources` (what ``--src`` names, read through the project's
dataset readers), :mod:`~partialnet.data.ffcv.writer`, :mod:`~partialnet.data.ffcv.beton` (sidecar
and integrity check), :mod:`~partialnet.data.ffcv.loader` (pipelines, per-epoch loader),
:mod:`~partialnet.data.ffcv.datamodule`, :mod:`~partialnet.data.ffcv.cli`, and
:mod:`~partialnet.data.ffcv.internals`, the only module relying on FFCV internals.

FFCV is imported lazily: without it this package imports fine and ``FFCVDataModule(...)`` or the
writer raise a one-line :class:`~partialnet.errors.UserError` naming ``bash scripts/install_ffcv.sh``
and the ImageFolder alternative ``data=imagenet_folder``.
"""
from partialnet.data.ffcv.beton import check_beton, read_sidecar, sidecar_path
from partialnet.data.ffcv.cli import main
from partialnet.data.ffcv.datamodule import FFCVDataModule
from partialnet.data.ffcv.loader import FFCVEpochLoader, build_pipelines
from partialnet.data.ffcv.requirement import require_ffcv
from partialnet.data.ffcv.writer import write_beton

__all__ = [
    "FFCVDataModule",
    "FFCVEpochLoader",
    "build_pipelines",
    "require_ffcv",
    "write_beton",
    "check_beton",
    "read_sidecar",
    "sidecar_path",
    "main",
]
