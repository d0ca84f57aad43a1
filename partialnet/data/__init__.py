"""Data: one LightningDataModule per dataset, all derived from :class:`ImageClassificationDataModule`.

``batch_size`` is always the global batch; see :mod:`partialnet.data.base` for the contract
(deterministic sampling, checkpointable worker seeds, errors).
"""
from partialnet.data.base import ImageClassificationDataModule
from partialnet.data.cifar10 import CIFAR10DataModule
from partialnet.data.fashion_mnist import FashionMNISTDataModule
from partialnet.data.folder import ImageFolderDataModule, TolerantImageFolder
from partialnet.data.synthetic import SyntheticDataModule

__all__ = [
    "ImageClassificationDataModule",
    "CIFAR10DataModule",
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
    "TolerantImageFolder",
    "SyntheticDataModule",
]
