"""Transforms: batched uint8 tensor augmentation for in-memory datasets, timm for folders.

In-memory datasets (Fashion-MNIST, CIFAR-10, synthetic) keep all images as one uint8
tensor ``[N, C, H, W]`` and augment a whole batch at once (pad + random crop + flip as
index arithmetic, then one float conversion and normalisation). The randomness of a
batch comes from a generator seeded with ``(seed, batch indices)``: since the sampler's
batches are a pure function of ``(seed, epoch, rank)``, so are the augmentations. They do
not touch the global RNG and do not depend on ``num_workers``, which makes resume exact.
"""
from __future__ import annotations

import contextlib
import hashlib
import random
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)

#: Pre-resize a whole in-memory set up front when the resized uint8 array stays below this.
PRE_RESIZE_BUDGET_BYTES = 1 << 30


def resize_uint8(x: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Bilinear resize of uint8 ``[N, C, H, W]`` to ``size x size`` (antialiased), uint8 out."""
    if x.shape[-2:] == (size, size):
        return x
    out = torch.empty((x.shape[0], x.shape[1], size, size), dtype=torch.uint8)
    for i in range(0, x.shape[0], chunk):
        y = F.interpolate(x[i:i + chunk].float(), size=(size, size), mode="bilinear",
                          align_corners=False, antialias=True)
        out[i:i + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


def random_crop_flip(x: torch.Tensor, padding: int, hflip: float, generator: torch.Generator) -> torch.Tensor:
    """Per-sample random crop (zero padding ``padding``) and horizontal flip of a uint8 batch.

    One ``gather`` over the flattened padded image (the crop offset and the flip are folded
    into the index), which is several times faster than advanced indexing on CPU.
    """
    b, c, h, w = x.shape
    if padding > 0:
        x = F.pad(x, (padding, padding, padding, padding))
    hp, wp = x.shape[-2:]
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < hflip
    ar_h, ar_w = torch.arange(h), torch.arange(w)
    rows = oy[:, None] + ar_h                                            # [B, H]
    cols = ox[:, None] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)  # [B, W]
    lin = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return x.reshape(b, c, hp * wp).gather(2, lin).view(b, c, h, w)


@contextlib.contextmanager
def single_thread():
    """Run small tensor ops on one intra-op thread.

    Batch augmentation touches < 1 MB per op; waking a second OpenMP thread for that costs
    more than it saves (measured 0.1 ms → 8 ms per ``index_select`` on a busy 2-core box).
    """
    n = torch.get_num_threads()
    if n > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n > 1:
            torch.set_num_threads(n)


@contextlib.contextmanager
def seeded_host_rngs(seed: int):
    """Temporarily seed torch (CPU), ``random`` and ``numpy`` RNGs; restore them after."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class InMemoryImageDataset(Dataset):
    """A uint8 image tensor + labels, with batched augmentation and normalisation.

    ``__getitems__`` (used by the DataLoader for a whole batch) resizes (if the stored size
    differs from ``image_size``), crops/flips (train), optionally applies a per-sample
    ``sample_transform`` (PIL in → PIL out, e.g. timm RandAugment), converts to float,
    normalises and replicates grey to ``out_channels``. It returns the list of
    ``(image, label)`` samples the default collate expects.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool = False,
        padding: int = 0,
        hflip: float = 0.0,
        seed: int = 0,
        sample_transform: Callable | None = None,
        out_channels: int = 3,
        classes: Sequence[str] | None = None,
    ):
        assert images.dtype == torch.uint8 and images.ndim == 4, "images must be uint8 [N, C, H, W]"
        assert len(images) == len(labels)
        c = images.shape[1]
        if images.shape[0] and tuple(images.shape[-2:]) != (image_size, image_size):
            resized_bytes = images.shape[0] * c * image_size ** 2
            if resized_bytes <= PRE_RESIZE_BUDGET_BYTES:
                images = resize_uint8(images, image_size)
        self.images = images.contiguous()
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.targets = self.labels.tolist()
        self.classes = list(classes) if classes is not None else None
        self.image_size = image_size
        self.train = train
        self.padding = padding
        self.hflip = hflip
        self.seed = seed
        self.sample_transform = sample_transform
        self.out_channels = out_channels
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = -mean_t / std_t

    def __len__(self) -> int:
        return len(self.labels)

    def _batch_seed(self, idx: np.ndarray) -> int:
        h = hashlib.blake2b(np.int64(self.seed).tobytes() + idx.tobytes(), digest_size=8).digest()
        return int.from_bytes(h, "little") >> 1

    def get_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images float [B, out_channels, S, S], labels int64 [B])`` for ``indices``."""
        with single_thread():
            return self._get_batch(indices)

    def _get_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        idx_t = torch.from_numpy(idx)
        x = self.images.index_select(0, idx_t)
        x = resize_uint8(x, self.image_size)
        if self.train:
            seed = self._batch_seed(idx)
            gen = torch.Generator().manual_seed(seed)
            if self.padding > 0 or self.hflip > 0:
                x = random_crop_flip(x, self.padding, self.hflip, gen)
            if self.sample_transform is not None:
                x = self._apply_sample_transform(x, seed)
        x = torch.addcmul(self._shift, x.float(), self._scale)
        if x.shape[1] != self.out_channels:
            x = x.expand(-1, self.out_channels, -1, -1)
        return x, self.labels.index_select(0, idx_t)

    def _apply_sample_transform(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        from PIL import Image

        out = torch.empty_like(x)
        with seeded_host_rngs(seed):
            for i in range(x.shape[0]):
                arr = x[i].permute(1, 2, 0).numpy()
                img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
                res = np.array(self.sample_transform(img), dtype=np.uint8)
                if res.ndim == 2:
                    res = res[..., None]
                out[i] = torch.from_numpy(res).permute(2, 0, 1)
        return out

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.get_batch(indices)
        return list(zip(x.unbind(0), y.unbind(0)))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.get_batch([index])
        return x[0], y[0]


def _safe_posterize(img, bits_to_keep, **_):
    """timm's posterize with ``bits_to_keep`` clamped to >= 1.

    timm's ``PosterizeIncreasing`` maps magnitude 10 (reached by e.g. ``m9-mstd0.5``) to 0
    bits; Pillow >= 13 rejects that with ``ValueError: bits must be between or equal to 1
    and 8`` (older Pillow returned a black image), which would kill a training run at a
    random step. One bit is the strongest valid posterize.
    """
    from PIL import ImageOps

    bits = max(1, int(bits_to_keep))
    return img if bits >= 8 else ImageOps.posterize(img, bits)


def fix_posterize(transform):
    """Point every timm posterize op inside ``transform`` at :func:`_safe_posterize`.

    Walks Compose ``transforms``, RandAugment/AugMix ``ops`` and AutoAugment ``policy``
    lists; only the op instances of this transform change (timm itself is not patched).
    """
    seen = set()

    def walk(obj):
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if "Posterize" in str(getattr(obj, "name", "")) and hasattr(obj, "aug_fn"):
            obj.aug_fn = _safe_posterize
        for attr in ("transforms", "ops", "policy"):
            for child in getattr(obj, attr, None) or ():
                walk(child)
        if isinstance(obj, (list, tuple)):
            for child in obj:
                walk(child)

    walk(transform)
    return transform


def folder_transforms(
    image_size: int,
    is_training: bool,
    *,
    eval_image_size: int | None = None,
    crop_pct: float = 0.9,
    interpolation: str = "bicubic",
    auto_augment: str | None = None,
    re_prob: float = 0.0,
    re_mode: str = "pixel",
    re_count: int = 1,
    hflip: float = 0.5,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    color_jitter: float | None = 0.4,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
):
    """timm transforms for PIL images from a folder.

    Train: RandomResizedCrop(``image_size``, ``scale``, ``interpolation``) + flip +
    (RandAugment/AutoAugment from the timm string ``auto_augment``, else colour jitter)
    + normalise + random erasing (``re_prob``). Eval: resize the short side to
    ``floor(size / crop_pct)`` then centre-crop ``size`` (224 → 248 → 224 at 0.9).
    """
    from timm.data import create_transform

    if is_training:
        return fix_posterize(create_transform(
            input_size=image_size, is_training=True, scale=tuple(scale), ratio=tuple(ratio),
            hflip=hflip, color_jitter=color_jitter, auto_augment=auto_augment,
            interpolation=interpolation, mean=tuple(mean), std=tuple(std),
            re_prob=re_prob, re_mode=re_mode, re_count=re_count,
        ))
    return create_transform(
        input_size=eval_image_size or image_size, is_training=False, crop_pct=crop_pct,
        interpolation=interpolation, mean=tuple(mean), std=tuple(std),
    )
