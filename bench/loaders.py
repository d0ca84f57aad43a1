"""Loader throughput: partialnet's FFCV train loader vs torchvision ImageFolder + DataLoader.

    python bench/loaders.py [--images 3000] [--workers 2] [--batch-size 128] [--sizes 224,160]

Data: real photos, not noise: CIFAR-10 training JPEGs (../shared/data/cifar10-train.tar.gz)
upsampled (bicubic) to a random 256-400 px longest side and aspect 3:4..4:3, re-saved as JPEG
quality 90 into a temporary folder; the same folder is written to a .beton with the writer's
defaults (max side 512, half the samples JPEG q90, half raw; --compress-prob 1.0 for all JPEG).

Both loaders produce the same thing: float32 [B, 3, S, S] normalised with ImageNet mean/std,
RandomResizedCrop(S, scale 0.08-1, ratio 3/4-4/3) + horizontal flip.
- ImageFolder: PIL decode, torchvision RandomResizedCrop (PIL bilinear), flip, ToTensor,
  Normalize; DataLoader(num_workers=W, persistent_workers=True, drop_last=True).
- FFCV: partialnet.data.ffcv.FFCVDataModule(num_workers=W).train_dataloader() on CPU (decode
  with libjpeg-turbo, crop+resize with OpenCV INTER_AREA, normalise with numba threads);
  the size switch uses the multi-scale schedule (no reload).

Per loader and size: one warm-up epoch (FFCV JIT-compiles there), then the median images/s of
--epochs timed epochs (loader only, no model). Prints a Markdown table and the FFCV/ImageFolder
ratio. Not a test.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-train.tar.gz"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def make_photos(dst: Path, n: int, seed: int = 0) -> int:
    """n upsampled CIFAR-10 photos in dst/<class>/*.jpg (classes balanced)."""
    from PIL import Image

    if not ARCHIVE.is_file():
        sys.exit(f"error: {ARCHIVE} not found (the CIFAR-10 JPEG archive the benchmark uses)")
    rng = np.random.default_rng(seed)
    per_class = -(-n // 10)
    counts: dict[str, int] = {}
    made = 0
    with tarfile.open(ARCHIVE, "r|gz") as tar:
        for m in tar:
            if made >= n:
                break
            parts = Path(m.name).parts
            if not m.isfile() or not m.name.endswith(".jpg") or len(parts) < 2:
                continue
            cls = parts[-2]
            if counts.get(cls, 0) >= per_class:
                continue
            im = Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")
            longest = int(rng.integers(256, 401))
            aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
            w, h = (longest, round(longest / aspect)) if aspect >= 1 else (round(longest * aspect), longest)
            (dst / cls).mkdir(parents=True, exist_ok=True)
            im.resize((w, h), Image.BICUBIC).save(dst / cls / f"{counts.get(cls, 0):05d}.jpg", quality=90)
            counts[cls] = counts.get(cls, 0) + 1
            made += 1
    return made


def imagefolder_loader(root: Path, size: int, batch: int, workers: int):
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision import transforms as T

    tf = T.Compose([
        T.RandomResizedCrop(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(MEAN, STD),
    ])
    ds = datasets.ImageFolder(str(root), transform=tf)
    g = torch.Generator()
    g.manual_seed(0)
    return DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                      persistent_workers=workers > 0, generator=g)


def time_epochs(loader, epochs: int) -> tuple[list[float], list[float], tuple]:
    """Images/s of each epoch (the first is the warm-up) and the seconds per epoch."""
    rates, secs, shape = [], [], None
    for _ in range(epochs + 1):
        t0 = time.perf_counter()
        n = 0
        for x, y in loader:
            n += int(y.shape[0])
            shape = (tuple(x.shape), x.dtype)
        dt = time.perf_counter() - t0
        rates.append(n / dt)
        secs.append(dt)
    return rates, secs, shape


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=3000, help="number of photos (default 3000)")
    ap.add_argument("--workers", type=int, default=2, help="loader workers / FFCV threads (default 2)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs after one warm-up (default 3)")
    ap.add_argument("--sizes", default="224,160", help="output sizes, comma separated (default 224,160)")
    ap.add_argument("--compress-prob", type=float, default=0.5,
                    help="fraction of .beton samples stored as JPEG, the rest raw (writer default 0.5; 1.0 = all JPEG)")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]

    from partialnet.data.ffcv import FFCVDataModule, write_beton
    from partialnet.errors import UserError

    with tempfile.TemporaryDirectory(prefix="partialnet-bench-loaders-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        n = make_photos(tmp / "photos", args.images)
        t_photos = time.perf_counter() - t0
        t0 = time.perf_counter()
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # FFCV's own progress bar
                write_beton(str(tmp / "photos"), tmp / "photos.beton", workers=args.workers,
                            compress_prob=args.compress_prob, progress=False)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        t_write = time.perf_counter() - t0
        beton_mb = (tmp / "photos.beton").stat().st_size / 2**20
        folder_mb = sum(f.stat().st_size for f in (tmp / "photos").rglob("*.jpg")) / 2**20

        results = []  # (loader, size, median img/s, epoch seconds)
        # FFCV: one DataModule, sizes switched by the multi-scale schedule (one warm-up each)
        step = args.epochs + 1
        schedule = [[i * step, s] for i, s in enumerate(sizes)]
        dm = FFCVDataModule(str(tmp / "photos.beton"), None, batch_size=args.batch_size, num_workers=args.workers,
                            image_size=max(sizes), multiscale=schedule, seed=0)
        ffcv_loader = dm.train_dataloader()
        for s in sizes:
            rates, secs, shape = time_epochs(ffcv_loader, args.epochs)
            assert shape[0][-1] == s, shape
            results.append(("FFCV .beton (FFCVDataModule)", s, statistics.median(rates[1:]), secs, shape))
        for s in sizes:
            loader = imagefolder_loader(tmp / "photos", s, args.batch_size, args.workers)
            rates, secs, shape = time_epochs(loader, args.epochs)
            results.append(("ImageFolder + DataLoader (PIL)", s, statistics.median(rates[1:]), secs, shape))
            del loader

    print(f"\n### Loader throughput: {n} photos (256-400 px JPEG q90 from CIFAR-10), "
          f"{args.workers} workers, batch {args.batch_size}, {os.cpu_count()} CPU cores, no model\n")
    print(f"photo folder {folder_mb:.0f} MiB (made in {t_photos:.1f} s); .beton {beton_mb:.0f} MiB, "
          f"{args.compress_prob:.0%} of samples JPEG (written in {t_write:.1f} s, {args.workers} writer processes)\n")
    print("| loader | size | images/s (median of %d) | warm-up epoch s | timed epochs s | output |" % args.epochs)
    print("|---|---:|---:|---:|---|---|")
    for name, s, rate, secs, shape in results:
        timed = ", ".join(f"{x:.2f}" for x in secs[1:])
        print(f"| {name} | {s} | {rate:.0f} | {secs[0]:.2f} | {timed} | {list(shape[0])} {str(shape[1]).replace('torch.', '')} |")
    print()
    by = {(name.split()[0], s): rate for name, s, rate, _, _ in results}
    for s in sizes:
        ratio = by[("FFCV", s)] / by[("ImageFolder", s)]
        verdict = ("target >= 1.5x: met" if ratio >= 1.5 else "target >= 1.5x: NOT met") if s == 224 else "no target"
        print(f"FFCV / ImageFolder at {s}: {ratio:.2f}x ({verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
