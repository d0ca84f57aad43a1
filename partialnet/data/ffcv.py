"""FFCV data pipeline: a ``.beton`` writer (CLI) and a distributed-aware LightningDataModule.

Write a dataset once::

    python -m partialnet.data.ffcv write --src /data/in1k/train --out /data/in1k_train.beton
    python -m partialnet.data.ffcv write --src /data/in1k/val --out /data/in1k_val.beton
    python -m partialnet.data.ffcv write --src cifar10:../shared/data/cifar10-train.tar.gz --out c10.beton
    python -m partialnet.data.ffcv write --src fashion_mnist --split test --out fm_test.beton
    python -m partialnet.data.ffcv info /data/in1k_train.beton

``--src`` is an ImageFolder root (``DIR/<class>/*.jpg``), ``fashion_mnist[:DIR]`` (the IDX
files of Debian's dataset-fashion-mnist) or ``cifar10[:PATH]`` (a folder or a .tar.gz with
``<split>/<class>/*.jpg``). The writer pre-scans every image (PIL verify + a reduced-size decode),
skips and counts unreadable ones, writes to a temporary file in the output folder and renames it
into place, and records its settings, class names, counts and skipped files in ``FILE.beton.json``.

Then train with ``data=imagenet_ffcv data.train_beton=... data.val_beton=...``.

Semantics (they differ from torchvision; see lessons §4.2):

- train: FFCV's RandomResizedCrop decoder (area scale ``rrc_scale``, aspect ``rrc_ratio``,
  resize with OpenCV ``INTER_AREA``) + horizontal flip, at ``resolution_at(epoch, multiscale,
  image_size)``; the decoder's output size is set at the start of every epoch, no reloads.
- val: FFCV's center crop: a square of ``crop_pct`` x the short side, resized to ``image_size``
  (= timm's ``crop_pct`` semantics, i.e. resize 256 / crop 224 for 0.875), ``INTER_AREA``.
- ``batch_size`` is GLOBAL; each process loads ``batch_size // world_size``.
- CPU: float32 normalised on CPU. GPU (trainer on CUDA): uint8 copied to the GPU
  (non_blocking), normalised there to float16 (bfloat16 / float32 when the trainer's precision
  asks for it), channels_last.
- Sample order is a pure function of ``(seed, epoch)`` (FFCV ``Loader`` with ``OrderOption.RANDOM``;
  ``DistributedSampler`` order under DDP), so a resume replays the exact order, also mid-epoch.
  Crop/flip randomness comes from numba's per-thread generators and is not bit-reproducible.
- FFCV's ``num_workers`` are numba threads inside the training process; FFCV also sets
  ``torch.set_num_threads(num_workers)``.

FFCV is imported lazily: without it this module imports fine and ``FFCVDataModule(...)`` or the
writer raise a one-line :class:`~partialnet.errors.UserError` naming ``bash scripts/install_ffcv.sh``
and the ImageFolder alternative ``data=imagenet_folder``.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gzip
import io
import json
import math
import multiprocessing as mp
import os
import struct
import sys
import tarfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pytorch_lightning as pl
import torch

from partialnet.errors import UserError
from partialnet.training.multiscale import (
    max_resolution,
    resolution_at,
    validate_schedule,
)

__all__ = [
    "FFCVDataModule",
    "require_ffcv",
    "write_beton",
    "check_beton",
    "read_sidecar",
    "sidecar_path",
    "main",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
SIDECAR_FORMAT = "partialnet-beton-sidecar/1"
_REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CIFAR10_ARCHIVE = _REPO_ROOT.parent / "shared" / "data" / "cifar10-train.tar.gz"

_INSTALL_HINT = (
    "run `bash scripts/install_ffcv.sh` (needs pkg-config, libopencv-dev, libturbojpeg0-dev, a C++ compiler), "
    "or use the ImageFolder pipeline instead: data=imagenet_folder"
)


# --------------------------------------------------------------------------------------------
# lazy import
# --------------------------------------------------------------------------------------------
def require_ffcv():
    """Import and return the ``ffcv`` package, or raise a one-line :class:`UserError`."""
    try:
        import ffcv  # noqa: F401
        import ffcv.fields.decoders  # noqa: F401  (loads numba, OpenCV and the C extension)
        import ffcv.loader  # noqa: F401
        import ffcv.transforms  # noqa: F401
        import ffcv.writer  # noqa: F401
    except (ImportError, OSError) as e:  # OSError: the C extension's shared libraries are missing
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"FFCV is not usable ({reason}): {_INSTALL_HINT}") from None
    return ffcv


# --------------------------------------------------------------------------------------------
# .beton files: sidecar and integrity check
# --------------------------------------------------------------------------------------------
def sidecar_path(beton: str | os.PathLike) -> Path:
    return Path(str(beton) + ".json")


def read_sidecar(beton: str | os.PathLike) -> dict | None:
    """The writer's JSON beside ``beton``, or ``None`` when there is none."""
    p = sidecar_path(beton)
    if not p.is_file():
        return None
    try:
        with open(p, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the sidecar {p}: {e}; rewrite the .beton or delete the sidecar") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise UserError(f"{p} is not a partialnet .beton sidecar (format {SIDECAR_FORMAT!r} expected)")
    return data


# Layout of a version-2 .beton header (ffcv/types.py: HeaderType, aligned): version u2,
# num_fields u2, page_size u4, num_samples u8, alloc_table_ptr u8.
_BETON_HEADER = np.dtype(
    [("version", "<u2"), ("num_fields", "<u2"), ("page_size", "<u4"), ("num_samples", "<u8"), ("alloc_table_ptr", "<u8")],
    align=True,
)
_ALLOC_ENTRY_BYTES = 24  # sample_id, ptr, size: three u8


def check_beton(path: str | os.PathLike, *, what: str = "beton", deep: bool = True) -> dict:
    """Check that ``path`` is a complete .beton (header, allocation table, sidecar agreement).

    Returns ``{"num_samples", "file_bytes", "sidecar"}``. Every problem is a one-line UserError.
    ``deep`` also opens it with FFCV's reader and checks every sample's data lies in the file.
    """
    p = Path(path)
    fix = f"write it with `python -m partialnet.data.ffcv write --src DIR --out {p}`"
    if not p.exists():
        raise UserError(f"{what} {p} not found: {fix}")
    if not p.is_file():
        raise UserError(f"{what} {p} is not a file: {fix}")
    size = p.stat().st_size
    if size < _BETON_HEADER.itemsize:
        raise UserError(f"{what} {p} is truncated ({size} bytes, smaller than a .beton header): {fix} --force")
    header = np.fromfile(p, dtype=_BETON_HEADER, count=1)[0]
    if int(header["version"]) != 2:
        raise UserError(f"{what} {p} is not an FFCV .beton file (format version {int(header['version'])}, 2 expected): {fix}")
    n = int(header["num_samples"])
    ptr = int(header["alloc_table_ptr"])
    bad = ""
    if ptr < _BETON_HEADER.itemsize:
        bad = "its writer did not finish (no allocation table)"
    elif ptr > size or (size - ptr) % _ALLOC_ENTRY_BYTES != 0:
        bad = f"allocation table at byte {ptr} does not fit a {size}-byte file"
    elif n > 0 and size == ptr:
        bad = "allocation table missing"
    side = read_sidecar(p)
    if not bad and side is not None:
        if int(side.get("file_bytes", size)) != size:
            bad = f"it is {size} bytes but its sidecar {sidecar_path(p).name} records {side['file_bytes']}"
        elif int(side.get("num_samples", n)) != n:
            bad = f"it holds {n} samples but its sidecar records {side['num_samples']}"
    if bad:
        raise UserError(f"{what} {p} is truncated or corrupt: {bad}; rewrite it (--force)")
    if deep:
        require_ffcv()
        from ffcv.reader import Reader

        try:
            reader = Reader(str(p))
            table = reader.alloc_table
            if n > 0 and (len(table) == 0 or int((table["ptr"] + table["size"]).max()) > ptr):
                raise ValueError("sample data extends past the allocation table")
            if "image" not in reader.handlers or "label" not in reader.handlers:
                raise ValueError(f"fields {list(reader.handlers)} (image and label expected)")
        except Exception as e:  # FFCV raises AssertionError/ValueError/IndexError on bad files
            raise UserError(f"{what} {p} cannot be read ({type(e).__name__}: {e}); rewrite it (--force)") from None
    return {"num_samples": n, "file_bytes": size, "sidecar": side}


def _labels_from_beton(path: str | os.PathLike) -> np.ndarray:
    require_ffcv()
    from ffcv.reader import Reader

    reader = Reader(str(path))
    ix = reader.field_names.index("label")
    return np.asarray(reader.metadata[f"f{ix}"]).reshape(-1)


# --------------------------------------------------------------------------------------------
# writer: sources
# --------------------------------------------------------------------------------------------
@dataclass
class _Source:
    kind: str  # folder | cifar10 | fashion_mnist
    path: str
    split: str
    classes: list[str]
    names: list[str]  # file path / archive member per sample (for reports)
    labels: list[int]
    blobs: list[bytes] | None = None  # encoded images held in memory (archives)
    arrays: np.ndarray | None = None  # decoded uint8 images (N, H, W) or (N, H, W, 3)
    extra: dict = field(default_factory=dict)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def _scan_folder(root: Path, kind: str = "folder", split: str = "") -> _Source:
    """ImageFolder layout: one folder per class (sorted), images anywhere below it (sorted)."""
    classes = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
    splits = {"train", "val", "valid", "validation", "test"}
    if classes and set(classes) <= splits:
        raise UserError(
            f"{root} holds split folders ({', '.join(classes)}), not class folders: pass --src {root}/{classes[0]}"
        )
    if len(classes) == 1:
        raise UserError(
            f"{root} has a single class folder ({classes[0]}): pass the folder that holds the class folders"
        )
    names, labels = [], []
    for label, c in enumerate(classes):
        files = []
        for dirpath, dirnames, filenames in os.walk(root / c, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            files += [os.path.join(dirpath, f) for f in sorted(filenames) if _is_image(f) and not f.startswith(".")]
        if not files:
            raise UserError(f"class folder {root / c} has no image files ({', '.join(IMG_EXTENSIONS)})")
        names += files
        labels += [label] * len(files)
    if not names:
        raise UserError(
            f"no images found under {root} (expected {root}/<class>/*.jpg, extensions {', '.join(IMG_EXTENSIONS)})"
        )
    return _Source(kind, str(root), split, classes, names, labels)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise UserError(f"{path} is truncated ({arr.size} values, {int(np.prod(shape))} expected)")
    return arr.reshape(shape)


def _fashion_mnist(root: str, split: str) -> _Source:
    base = Path(root)
    prefix = {"train": "train", "test": "t10k", "val": "t10k"}.get(split)
    if prefix is None:
        raise UserError(f"fashion_mnist has splits train and test (val = test), not {split!r}")

    def find(stem: str) -> Path:
        for cand in (base / f"{stem}.gz", base / stem):
            if cand.is_file():
                return cand
        raise UserError(
            f"Fashion-MNIST file {stem}[.gz] not found in {base}: apt-get install dataset-fashion-mnist, "
            "or pass fashion_mnist:DIR"
        )

    images = _read_idx(find(f"{prefix}-images-idx3-ubyte"))
    labels = _read_idx(find(f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
    if images.ndim != 3 or len(images) != len(labels):
        raise UserError(f"Fashion-MNIST files in {base} disagree: {images.shape} images, {labels.shape} labels")
    names = [f"{prefix}[{i}]" for i in range(len(labels))]
    return _Source("fashion_mnist", str(base), split, list(FASHION_MNIST_CLASSES), names, labels.tolist(), arrays=images)


def _cifar10(path: str, split: str) -> _Source:
    p = Path(path)
    if p.is_dir():
        for cand in (p / split, p / "cifar10" / split, p):
            if cand.is_dir() and any(d.is_dir() for d in os.scandir(cand)):
                src = _scan_folder(cand, "cifar10", split)
                src.path = str(p)
                return src
        raise UserError(f"cifar10:{p}: no {split}/<class>/*.jpg folders found")
    if not p.is_file():
        raise UserError(f"cifar10:{p} not found (a folder with {split}/<class>/*.jpg or its .tar.gz archive)")
    try:
        with tarfile.open(p, "r:*") as tar:
            members = [m for m in tar.getmembers() if m.isfile() and _is_image(m.name)]
            parts = [Path(m.name).parts for m in members]
            chosen = [(m, pt) for m, pt in zip(members, parts, strict=False) if len(pt) >= 3 and pt[-3] == split]
            if not chosen:  # an archive of a bare <class>/<file> layout
                chosen = [(m, pt) for m, pt in zip(members, parts, strict=False) if len(pt) >= 2]
            if not chosen:
                raise UserError(f"cifar10:{p}: no {split}/<class>/*.jpg members in the archive")
            chosen.sort(key=lambda mp_: (mp_[1][-2], mp_[1][-1]))
            classes = sorted({pt[-2] for _, pt in chosen})
            index = {c: i for i, c in enumerate(classes)}
            names, labels, blobs = [], [], []
            for m, pt in chosen:
                f = tar.extractfile(m)
                blobs.append(f.read() if f is not None else b"")
                names.append(f"{p.name}:{m.name}")
                labels.append(index[pt[-2]])
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UserError(f"cannot read the archive {p}: {e}") from None
    return _Source("cifar10", str(p), split, classes, names, labels, blobs=blobs)


def resolve_source(spec: str, split: str = "train") -> _Source:
    """``--src`` → samples: a folder, ``fashion_mnist[:DIR]`` or ``cifar10[:PATH]``."""
    if spec == "fashion_mnist" or spec.startswith("fashion_mnist:"):
        return _fashion_mnist(spec.partition(":")[2] or FASHION_MNIST_DIR, split)
    if spec == "cifar10" or spec.startswith("cifar10:"):
        return _cifar10(spec.partition(":")[2] or str(DEFAULT_CIFAR10_ARCHIVE), split)
    root = Path(spec)
    if not root.is_dir():
        raise UserError(f"--src {spec}: not a folder (use DIR with DIR/<class>/*.jpg, fashion_mnist or cifar10:PATH)")
    return _scan_folder(root)


# --------------------------------------------------------------------------------------------
# writer: pre-scan and the indexed dataset FFCV's DatasetWriter reads
# --------------------------------------------------------------------------------------------
def _open_image(item):
    from PIL import Image

    return Image.open(io.BytesIO(item) if isinstance(item, (bytes, bytearray)) else item)


def _probe(item) -> tuple[bool, int, int, str]:
    """(ok, width, height, reason): PIL verify, then a decode (JPEGs at 1/8 scale, which still
    reads every byte of the entropy-coded data, so truncated files fail here)."""
    try:
        with _open_image(item) as im:
            im.verify()
        with _open_image(item) as im:
            w, h = im.size
            if im.format == "JPEG":
                im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
            im.load()
            if w < 1 or h < 1:
                raise ValueError("empty image")
        return True, int(w), int(h), ""
    except Exception as e:  # PIL raises many types for bad files
        msg = " ".join(str(e).split()) or type(e).__name__
        return False, 0, 0, f"{type(e).__name__}: {msg}"[:300]


class _ImageDataset:
    """Indexable (image HxWx3 uint8, label) over the pre-scanned samples, for DatasetWriter."""

    def __init__(self, src: _Source, keep: np.ndarray, max_res: int, seed: int, fail_log: str):
        self.src = src
        self.keep = keep
        self.max_res = max_res
        self.seed = seed
        self.fail_log = fail_log

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, i: int):
        j = int(self.keep[i])
        # RGBImageField(write_mode="proportion") draws np.random per sample: seed it per index so
        # which samples are JPEG-compressed does not depend on the worker that wrote them.
        np.random.seed((self.seed * 1_000_003 + j) % (2**32))
        label = int(self.src.labels[j])
        try:
            if self.src.arrays is not None:
                a = self.src.arrays[j]
                img = np.ascontiguousarray(np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a)
            else:
                item = self.src.blobs[j] if self.src.blobs is not None else self.src.names[j]
                with _open_image(item) as im:
                    w, h = im.size
                    if self.max_res and im.format == "JPEG" and max(w, h) > 2 * self.max_res:
                        s = self.max_res / max(w, h)  # DCT-domain downscale; stays >= max_res
                        im.draft("RGB", (math.ceil(w * s), math.ceil(h * s)))
                    img = np.ascontiguousarray(np.asarray(im.convert("RGB")))
            return img, label
        except Exception as e:  # must not raise: a dead FFCV writer worker hangs the writer
            with open(self.fail_log, "a", encoding="utf-8") as f:
                f.write(f"{self.src.names[j]}\t{type(e).__name__}: {' '.join(str(e).split())}\n")
            return np.zeros((1, 1, 3), np.uint8), label


class _WorkerWatchdog:
    """FFCV's DatasetWriter waits forever when one of its worker processes dies (killed, disk
    full, ...): its progress loop polls a shared counter the dead worker never advances.

    While active, the writer's ``Process`` class is swapped (in ``ffcv.writer`` only, restored on
    exit) for a subclass that records each worker. When one dies, the others are terminated and
    the main thread gets a KeyboardInterrupt (``_thread.interrupt_main``) that the caller turns
    into a clear error, with ``failed`` saying why.
    """

    def __init__(self):
        self.failed: str | None = None
        self.workers: list = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self._writer_module = None
        self._orig_process = None

    def _run(self):
        import _thread

        while not self.stop.wait(0.1):
            dead = [p for p in list(self.workers) if p.exitcode not in (None, 0)]
            if dead and not self.stop.is_set():
                self.failed = f"a writer worker process died (exit code {dead[0].exitcode})"
                for p in self.workers:
                    if p.exitcode is None:
                        p.terminate()
                _thread.interrupt_main()
                return

    def __enter__(self):
        import ffcv.writer as writer_module

        registry = self.workers
        base = writer_module.Process

        class _TrackedProcess(base):
            def start(self_):
                registry.append(self_)
                return super().start()

        self._writer_module, self._orig_process = writer_module, base
        writer_module.Process = _TrackedProcess
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._writer_module.Process = self._orig_process
        self.stop.set()
        self.thread.join(timeout=60)


def _remove_stale_temp_files(out: Path) -> None:
    """Temp files a killed writer (SIGKILL, power loss) left beside ``out``: their pid is gone."""
    for f in out.parent.glob(f".{out.name}.*-*"):
        kind, _, pid = f.name[len(out.name) + 2:].partition("-")
        if kind not in ("tmp", "failed") or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            try:
                f.unlink()
            except OSError:
                pass
        except PermissionError:  # someone else's live process
            pass


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("ffcv", "numba", "numpy", "opencv-python-headless", "pillow", "partialnet"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def write_beton(
    src: str,
    out: str | os.PathLike,
    *,
    split: str = "train",
    max_res: int = 512,
    jpeg_quality: int = 90,
    compress_prob: float = 0.5,
    workers: int | None = None,
    force: bool = False,
    limit: int | None = None,
    seed: int = 0,
    chunksize: int = 100,
    progress: bool = True,
) -> dict:
    """Convert ``src`` into the .beton ``out`` (RGBImageField ``image`` + IntField ``label``).

    Returns the sidecar dict (also written to ``out + '.json'``). See the module docstring.
    """
    t0 = time.time()
    out = Path(out)
    if out.suffix != ".beton":
        raise UserError(f"--out {out}: use a .beton file name")
    if out.exists() and not force:
        raise UserError(f"{out} exists; pass --force to overwrite it")
    if not out.parent.is_dir():
        raise UserError(f"output folder {out.parent} does not exist")
    if not (0 <= max_res <= 65535):
        raise UserError(f"--max-res {max_res}: use 1..65535 (longest side in px), or 0 to keep sizes")
    if not (1 <= jpeg_quality <= 100):
        raise UserError(f"--jpeg-quality {jpeg_quality}: use 1..100")
    if not (0.0 <= compress_prob <= 1.0):
        raise UserError(f"--compress-prob {compress_prob}: use a probability in [0, 1]")
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: use a positive number of images")
    workers = max(1, int(workers or min(8, os.cpu_count() or 1)))
    require_ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter
    from tqdm import tqdm

    source = resolve_source(src, split)
    total = len(source.labels)
    candidates = np.arange(total)
    if limit is not None and limit < total:  # evenly spaced, so every class keeps its share
        candidates = np.unique(np.linspace(0, total - 1, limit).round().astype(np.int64))

    # ---- pre-scan ----
    skipped: list[dict] = []
    if source.arrays is not None:
        h, w = source.arrays.shape[1:3]
        sizes = np.tile([w, h], (len(candidates), 1))
        keep = candidates
    else:
        items = [source.blobs[j] if source.blobs is not None else source.names[j] for j in candidates]
        if workers > 1 and len(items) > 64:
            with mp.get_context("fork").Pool(workers) as pool:
                probes = list(
                    tqdm(pool.imap(_probe, items, chunksize=64), total=len(items), desc="scan", disable=not progress,
                         file=sys.stderr)
                )
        else:
            probes = [_probe(it) for it in tqdm(items, desc="scan", disable=not progress, file=sys.stderr)]
        ok = np.array([p[0] for p in probes], bool)
        for j, (good, w_, h_, reason) in zip(candidates, probes, strict=False):
            if good and max_res == 0 and max(w_, h_) > 65535:
                skipped.append({"path": source.names[j], "reason": "larger than 65535 px (the .beton limit); use --max-res"})
            elif not good:
                skipped.append({"path": source.names[j], "reason": reason})
        too_big = np.array([max_res == 0 and max(p[1], p[2]) > 65535 for p in probes], bool)
        ok &= ~too_big
        keep = candidates[ok]
        sizes = np.array([[p[1], p[2]] for p, k in zip(probes, ok, strict=False) if k], dtype=np.int64).reshape(-1, 2)
    if len(keep) == 0:
        raise UserError(f"no readable images in {src} ({len(skipped)} unreadable, e.g. {skipped[0]['path'] if skipped else '-'})")

    # page size: every sample must fit one page (FFCV raises inside a worker otherwise)
    longest = sizes.max(axis=1).astype(np.float64)
    scale = np.minimum(1.0, max_res / longest) if max_res else np.ones_like(longest)
    stored = (sizes * scale[:, None]).astype(np.int64)
    biggest = int((stored[:, 0] * stored[:, 1] * 3).max()) + 4096
    # FFCV's default 8 MiB pages for real data sets; small ones get 2 MiB pages (each writer
    # worker pads its last page, so the file has up to workers x page_size of padding)
    raw_total = float((stored[:, 0] * stored[:, 1] * 3).sum())
    page_size = max(1 << 23 if raw_total > 2**30 else 1 << 21, _next_pow2(2 * biggest))

    _remove_stale_temp_files(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    fail_log = out.with_name(f".{out.name}.failed-{os.getpid()}")
    counts = np.bincount(np.asarray(source.labels)[keep], minlength=len(source.classes))
    try:
        fail_log.write_text("")
        dataset = _ImageDataset(source, keep, max_res, seed, str(fail_log))
        field_img = RGBImageField(
            write_mode="proportion",
            max_resolution=max_res or None,
            jpeg_quality=jpeg_quality,
            compress_probability=compress_prob,
        )
        writer = DatasetWriter(str(tmp), {"image": field_img, "label": IntField()}, page_size=page_size,
                               num_workers=workers)
        if progress:
            print(f"writing {len(keep)} images ({len(source.classes)} classes) to {out}", file=sys.stderr)

        quiet = contextlib.redirect_stderr(io.StringIO()) if not progress else contextlib.nullcontext()
        dog = _WorkerWatchdog()
        try:
            with dog, quiet:  # (FFCV's own tqdm bar goes to stderr)
                writer.from_indexed_dataset(dataset, chunksize=max(1, int(chunksize)))
        except KeyboardInterrupt:
            if not dog.failed:
                raise
        if dog.failed:
            sm = getattr(writer, "metadata_sm", None)  # FFCV's shared metadata block, left behind
            if sm is not None and not isinstance(sm, int):
                try:
                    sm.close()
                    sm.unlink()
                except (OSError, FileNotFoundError):
                    pass
            raise UserError(f"writing {out} failed: {dog.failed}; nothing was written (disk full? out of memory?)")
        failures = [ln for ln in fail_log.read_text(encoding="utf-8").splitlines() if ln]
        if failures:
            raise UserError(
                f"{len(failures)} images passed the pre-scan but failed to decode while writing "
                f"(first: {failures[0]}); nothing was written"
            )
        info = check_beton(tmp, what="written file", deep=True)
        if info["num_samples"] != len(keep):
            raise UserError(f"the written file holds {info['num_samples']} samples, {len(keep)} expected")
        side = {
            "format": SIDECAR_FORMAT,
            "beton": out.name,
            "file_bytes": info["file_bytes"],
            "num_samples": int(len(keep)),
            "num_classes": len(source.classes),
            "class_names": list(source.classes),
            "class_counts": [int(c) for c in counts],
            "fields": {"image": "RGBImageField", "label": "IntField"},
            "writer": {
                "max_resolution": int(max_res) or None,
                "jpeg_quality": int(jpeg_quality),
                "compress_probability": float(compress_prob),
                "write_mode": "proportion",
                "resize": "longest side to max_resolution, OpenCV INTER_AREA, downscale only",
                "page_size": int(page_size),
                "seed": int(seed),
                "workers": workers,
                "chunksize": int(chunksize),
            },
            "source": {
                "spec": src,
                "kind": source.kind,
                "path": str(Path(source.path).resolve()),
                "split": split,
                "found": int(total),
                "limit": limit,
            },
            "skipped": {"count": len(skipped), "files": skipped},
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.time() - t0, 2),
            "versions": _versions(),
        }
        os.replace(tmp, out)
        _atomic_write_text(sidecar_path(out), json.dumps(side, indent=1) + "\n")
    finally:
        for f in (tmp, fail_log):
            try:
                f.unlink()
            except OSError:
                pass
    if progress:
        mb = side["file_bytes"] / 2**20
        print(
            f"wrote {side['num_samples']} images, {side['num_classes']} classes, {len(skipped)} skipped, "
            f"{mb:.1f} MiB in {side['seconds']:.1f} s -> {out} (+ {sidecar_path(out).name})",
            file=sys.stderr,
        )
        for s in skipped[:10]:
            print(f"  skipped {s['path']}: {s['reason']}", file=sys.stderr)
        if len(skipped) > 10:
            print(f"  ... and {len(skipped) - 10} more (listed in the sidecar)", file=sys.stderr)
    return side


# --------------------------------------------------------------------------------------------
# loader: pipelines
# --------------------------------------------------------------------------------------------
_OPS: dict[str, Any] = {}


def _torch_normalize_cls():
    """An FFCV Operation normalising uint8 NHWC torch tensors on their own device (the GPU path).

    FFCV's own NormalizeImage needs CuPy on the GPU; this one uses torch ops and writes into a
    buffer FFCV allocates (so FFCV's per-slot stream/event bookkeeping protects it).
    """
    if "TorchNormalize" in _OPS:
        return _OPS["TorchNormalize"]
    from dataclasses import replace

    from ffcv.pipeline.allocation_query import AllocationQuery
    from ffcv.pipeline.operation import Operation

    class TorchNormalize(Operation):
        def __init__(self, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype):
            super().__init__()
            self.mean = torch.tensor(mean, dtype=torch.float32)  # 0..255 units
            self.inv_std = 1.0 / torch.tensor(std, dtype=torch.float32)
            self.dtype = dtype

        def generate_code(self):
            consts: dict = {}

            def normalize(images, dst):
                out = dst[: images.shape[0]]
                if images.device not in consts:
                    consts[images.device] = (self.mean.to(images.device), self.inv_std.to(images.device))
                m, s = consts[images.device]
                out.copy_((images.float() - m) * s)
                return out

            return normalize

        def declare_state_and_memory(self, previous_state):
            return (
                replace(previous_state, jit_mode=False, dtype=self.dtype),
                AllocationQuery(previous_state.shape, dtype=self.dtype, device=previous_state.device),
            )

    _OPS["TorchNormalize"] = TorchNormalize
    return TorchNormalize


def build_pipelines(
    kind: str,
    resolution: int,
    *,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float16,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    crop_pct: float = 0.9,
    rrc_scale: Sequence[float] = (0.08, 1.0),
    rrc_ratio: Sequence[float] = (3 / 4, 4 / 3),
    flip: bool = True,
):
    """FFCV pipelines for ``kind`` in {"train", "val"}: returns ``(pipelines, decoder)``.

    ``device=None``: decode + normalise on CPU to float32 NHWC memory (channels_last view).
    ``device`` given: uint8 to ``device`` (non_blocking), normalised there to ``dtype``.
    """
    require_ffcv()
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import (
        CenterCropRGBImageDecoder,
        RandomResizedCropRGBImageDecoder,
    )
    from ffcv.transforms import (
        NormalizeImage,
        RandomHorizontalFlip,
        ToDevice,
        ToTensor,
        ToTorchImage,
    )

    size = (int(resolution), int(resolution))
    if kind == "train":
        decoder = RandomResizedCropRGBImageDecoder(size, scale=tuple(rrc_scale), ratio=tuple(rrc_ratio))
        ops: list = [decoder] + ([RandomHorizontalFlip()] if flip else [])
    elif kind == "val":
        decoder = CenterCropRGBImageDecoder(size, ratio=float(crop_pct))
        ops = [decoder]
    else:
        raise ValueError(kind)
    mean255 = np.asarray(mean, np.float64) * 255.0
    std255 = np.asarray(std, np.float64) * 255.0
    if device is None:
        ops += [NormalizeImage(mean255, std255, np.float32), ToTensor(), ToTorchImage(channels_last=True)]
        label_ops = [IntDecoder(), ToTensor()]
    else:
        norm = _torch_normalize_cls()(mean255.tolist(), std255.tolist(), dtype)
        ops += [ToTensor(), ToDevice(device, non_blocking=True), norm,
                ToTorchImage(channels_last=True, convert_back_int16=False)]
        label_ops = [IntDecoder(), ToTensor(), ToDevice(device, non_blocking=True)]
    return {"image": ops, "label": label_ops}, decoder


class FFCVEpochLoader:
    """What ``train_dataloader()`` returns: a thin iterable over an FFCV ``Loader``.

    Every ``iter()`` reads the epoch (the trainer's ``current_epoch``, else an internal counter),
    sets the decoder's output size from the multi-scale schedule and replays FFCV's order for
    ``(seed, epoch)``. ``state_dict()`` / ``load_state_dict()`` (Lightning calls them for
    mid-epoch checkpoints) record how many batches of the epoch were consumed, so a resume skips
    exactly those.
    """

    def __init__(self, dm: "FFCVDataModule", split: str, loader, decoder, channels_last: bool):
        self.dm = dm
        self.split = split
        self.loader = loader
        self.decoder = decoder
        self.channels_last = channels_last
        self._pending: dict | None = None

    # -- bookkeeping ---------------------------------------------------------------------
    def current_epoch(self) -> int:
        return self.dm._current_epoch()

    def resolution(self, epoch: int | None = None) -> int:
        if self.split != "train":
            return self.dm.image_size
        return self.dm.train_resolution(self.current_epoch() if epoch is None else epoch)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def batch_size(self) -> int:
        return int(self.loader.batch_size)

    def state_dict(self) -> dict:
        consumed = 0
        t = self.dm._trainer_or_none()
        if t is not None and self.split == "train":
            try:
                consumed = int(t.fit_loop.epoch_loop.batch_progress.current.processed)
            except AttributeError:
                consumed = 0
        return {"split": self.split, "epoch": self.current_epoch(), "seed": int(self.loader.seed),
                "batches_consumed": consumed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("split", self.split) == self.split and int(state.get("batches_consumed", 0)) > 0:
            self._pending = dict(state)

    # -- iteration -----------------------------------------------------------------------
    def _start(self, epoch: int, skip_batches: int):
        from ffcv.loader.epoch_iterator import EpochIterator
        from ffcv.pipeline.compiler import Compiler

        ld = self.loader
        Compiler.set_num_threads(ld.num_workers)
        order = ld.traversal_order.sample_order(epoch)
        order = order[: len(ld) * ld.batch_size] if ld.drop_last else order
        order = order[skip_batches * ld.batch_size:]
        ld.next_epoch = epoch + 1
        if ld.code is None or ld.recompile:
            ld.generate_code()
        return EpochIterator(ld, order)

    def __iter__(self) -> Iterator:
        return self._generate()

    def _generate(self) -> Iterator:
        # a generator: nothing is decoded before the first next(), i.e. after Lightning's
        # epoch bookkeeping, and the FFCV thread is closed when the generator is dropped
        epoch = self.current_epoch()
        res = self.resolution(epoch)
        self.decoder.output_size = (res, res)
        skip = 0
        if self._pending is not None:
            if int(self._pending.get("epoch", -1)) == epoch:
                skip = min(int(self._pending["batches_consumed"]), len(self))
            self._pending = None
        if self.split == "train" and self.dm._trainer_or_none() is None:
            self.dm._epoch = epoch + 1  # without a trainer, each iter() is the next epoch
        if skip >= len(self):
            return
        it = self._start(epoch, skip)
        try:
            for images, labels in it:
                if not self.channels_last:
                    images = images.contiguous()
                yield images, labels.reshape(-1)
        finally:
            it.close()


# --------------------------------------------------------------------------------------------
# the DataModule
# --------------------------------------------------------------------------------------------
def _as_pair(x, name: str) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in x)
    except (TypeError, ValueError):
        raise UserError(f"data.{name}={x!r}: use two numbers, e.g. [0.08, 1.0]") from None
    if not (0 < a <= b):
        raise UserError(f"data.{name}={x!r}: use 0 < low <= high")
    return a, b


class FFCVDataModule(pl.LightningDataModule):
    """ImageNet-style classification data from FFCV ``.beton`` files (see the module docstring).

    Args:
        train_beton, val_beton: files written by ``python -m partialnet.data.ffcv write``
            (``val_beton`` may be None: no validation loader).
        batch_size: GLOBAL batch size; each process loads ``batch_size // world_size``.
        num_workers: FFCV decoding threads per process (<= 0: all cores).
        image_size: training resolution without a multi-scale schedule, and the eval resolution.
        crop_pct: eval center crop = ``crop_pct`` x the short side, resized to ``image_size``.
        multiscale: ``[[first_epoch, resolution], ...]`` for training (``resolution_at``).
        os_cache: memory-map the file (shared page cache across ranks) instead of FFCV's
            process cache.
        seed: order seed; the order of epoch ``e`` is a function of ``(seed, e)``.
        mean, std: normalisation in [0, 1] units.
        channels_last: return channels_last tensors (otherwise contiguous NCHW).
        rrc_scale, rrc_ratio, flip: train augmentation.
        drop_last: drop the last partial training batch (always kept for validation).
        batches_ahead: FFCV's prefetch depth.
    """

    def __init__(
        self,
        train_beton: str,
        val_beton: str | None = None,
        batch_size: int = 1024,
        num_workers: int = 8,
        image_size: int = 224,
        crop_pct: float = 0.9,
        multiscale: Sequence[Sequence[int]] | None = None,
        os_cache: bool = False,
        seed: int = 0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        channels_last: bool = True,
        rrc_scale: Sequence[float] = (0.08, 1.0),
        rrc_ratio: Sequence[float] = (3 / 4, 4 / 3),
        flip: bool = True,
        drop_last: bool = True,
        batches_ahead: int = 3,
    ):
        super().__init__()
        require_ffcv()
        if train_beton is None or str(train_beton) in ("", "???"):
            raise UserError("data.train_beton is not set: pass data.train_beton=/path/train.beton")
        if int(batch_size) < 1:
            raise UserError(f"data.batch_size={batch_size}: use a positive GLOBAL batch size")
        if int(image_size) < 8:
            raise UserError(f"data.image_size={image_size}: use at least 8 px")
        if not (0.0 < float(crop_pct) <= 1.0):
            raise UserError(f"data.crop_pct={crop_pct}: use a ratio in (0, 1]")
        mean = tuple(float(v) for v in mean)
        std = tuple(float(v) for v in std)
        if len(mean) != 3 or len(std) != 3 or max(mean) > 1.0 or min(std) <= 0 or max(std) > 1.0:
            raise UserError(f"data.mean={list(mean)} / data.std={list(std)}: use 3 values each in [0, 1] units")
        self.train_beton = str(train_beton)
        self.val_beton = None if val_beton in (None, "") else str(val_beton)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers) if int(num_workers) > 0 else (os.cpu_count() or 1)
        self.image_size = int(image_size)
        self.crop_pct = float(crop_pct)
        self.multiscale = [list(e) for e in validate_schedule(multiscale)] or None
        self.os_cache = bool(os_cache)
        self.seed = int(seed)
        self.mean, self.std = mean, std
        self.channels_last = bool(channels_last)
        self.rrc_scale = _as_pair(rrc_scale, "rrc_scale")
        self.rrc_ratio = _as_pair(rrc_ratio, "rrc_ratio")
        self.flip = bool(flip)
        self.drop_last = bool(drop_last)
        self.batches_ahead = max(1, int(batches_ahead))

        info = check_beton(self.train_beton, what="data.train_beton")
        if self.val_beton is not None:
            check_beton(self.val_beton, what="data.val_beton")
        side = info["sidecar"]
        if side is not None:
            self.class_names = list(side.get("class_names") or [])
            self.num_classes = int(side["num_classes"])
        else:
            labels = _labels_from_beton(self.train_beton)
            self.num_classes = int(labels.max()) + 1 if labels.size else 0
            self.class_names = [str(i) for i in range(self.num_classes)]
        self.num_train_samples = info["num_samples"]

        self.per_device_batch_size = self.batch_size
        self.world_size = 1
        self._loaders: dict[str, FFCVEpochLoader] = {}
        self._epoch = 0  # the next training epoch when no trainer is attached

    # -- helpers -------------------------------------------------------------------------
    def _trainer_or_none(self):
        try:
            return self.trainer
        except RuntimeError:
            return None

    def train_resolution(self, epoch: int) -> int:
        return resolution_at(epoch, self.multiscale, self.image_size)

    @property
    def max_train_resolution(self) -> int:
        return max_resolution(self.multiscale, self.image_size)

    def _device_and_dtype(self) -> tuple[torch.device | None, torch.dtype]:
        t = self._trainer_or_none()
        if t is None or not torch.cuda.is_available():
            return None, torch.float32
        dev = t.strategy.root_device
        if dev.type != "cuda":
            return None, torch.float32
        prec = str(getattr(t, "precision", "16-mixed"))
        if prec.startswith("bf16"):
            dtype = torch.bfloat16
        elif prec.startswith("32"):
            dtype = torch.float32
        elif prec.startswith("64"):
            dtype = torch.float64
        else:
            dtype = torch.float16
        return dev, dtype

    # -- Lightning hooks -----------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        t = self._trainer_or_none()
        self.world_size = int(t.world_size) if t is not None else 1
        if self.batch_size % self.world_size:
            raise UserError(
                f"data.batch_size={self.batch_size} (global) is not divisible by world size {self.world_size}: "
                f"use a multiple of {self.world_size}"
            )
        self.per_device_batch_size = self.batch_size // self.world_size

    def _build(self, split: str) -> FFCVEpochLoader:
        if split in self._loaders:
            return self._loaders[split]
        require_ffcv()
        from ffcv.loader import Loader, OrderOption

        self.setup()
        device, dtype = self._device_and_dtype()
        train = split == "train"
        res = self.train_resolution(self._current_epoch()) if train else self.image_size
        pipelines, decoder = build_pipelines(
            "train" if train else "val", res, device=device, dtype=dtype, mean=self.mean, std=self.std,
            crop_pct=self.crop_pct, rrc_scale=self.rrc_scale, rrc_ratio=self.rrc_ratio, flip=self.flip,
        )
        path = self.train_beton if train else self.val_beton
        try:
            loader = Loader(
                path,
                batch_size=self.per_device_batch_size,
                num_workers=self.num_workers,
                os_cache=self.os_cache,
                order=OrderOption.RANDOM if train else OrderOption.SEQUENTIAL,
                distributed=self.world_size > 1,
                seed=self.seed,
                pipelines=pipelines,
                drop_last=self.drop_last if train else False,
                batches_ahead=self.batches_ahead,
            )
        except (ValueError, AssertionError, OSError, IndexError) as e:
            raise UserError(f"cannot open {path} with FFCV ({type(e).__name__}: {e})") from None
        if train and len(loader) == 0:
            raise UserError(
                f"{path}: {self.num_train_samples} samples make no full batch of {self.per_device_batch_size} "
                "per device; lower data.batch_size or set data.drop_last=false"
            )
        wrapped = FFCVEpochLoader(self, split, loader, decoder, self.channels_last)
        self._loaders[split] = wrapped
        return wrapped

    def _current_epoch(self) -> int:
        t = self._trainer_or_none()
        return int(t.current_epoch) if t is not None else int(self._epoch)

    def train_dataloader(self) -> FFCVEpochLoader:
        return self._build("train")

    def val_dataloader(self):
        if self.val_beton is None:
            return []
        return self._build("val")

    def test_dataloader(self):
        return self.val_dataloader()

    def state_dict(self) -> dict:
        return {
            "seed": self.seed,
            "epoch": self._current_epoch(),
            "train_resolution": self.train_resolution(self._current_epoch()),
            "global_batch_size": self.batch_size,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        seed = int(state_dict.get("seed", self.seed))
        if seed != self.seed:
            warnings.warn(
                f"FFCVDataModule: resuming with the checkpoint's order seed {seed} (config says {self.seed})",
                stacklevel=2,
            )
            self.seed = seed
            self._loaders.clear()
        self._epoch = int(state_dict.get("epoch", self._epoch))

    def teardown(self, stage: str | None = None) -> None:
        pass


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m partialnet.data.ffcv", description="FFCV .beton tools for partialnet")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    w = sub.add_parser("write", help="convert an image dataset into a .beton (+ FILE.beton.json)")
    w.add_argument("--src", required=True,
                   help="ImageFolder root DIR (DIR/<class>/*.jpg), fashion_mnist[:DIR] or cifar10[:PATH]")
    w.add_argument("--out", required=True, help="output FILE.beton")
    w.add_argument("--split", default="train", help="split for fashion_mnist/cifar10 sources (default train)")
    w.add_argument("--max-res", type=int, default=512, help="longest side stored, px (0: keep; default 512)")
    w.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality of compressed samples (default 90)")
    w.add_argument("--compress-prob", type=float, default=0.5,
                   help="fraction of samples stored as JPEG, the rest raw (default 0.5)")
    w.add_argument("--workers", type=int, default=None, help="writer processes (default min(8, cores))")
    w.add_argument("--limit", type=int, default=None, help="write only N evenly spaced samples")
    w.add_argument("--seed", type=int, default=0, help="seed of the raw/JPEG choice (default 0)")
    w.add_argument("--chunksize", type=int, default=100, help="samples per worker task (default 100)")
    w.add_argument("--force", action="store_true", help="overwrite an existing FILE.beton")
    w.add_argument("--quiet", action="store_true", help="no progress output")
    i = sub.add_parser("info", help="check a .beton and print its sidecar summary")
    i.add_argument("beton")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        if args.cmd == "write":
            write_beton(
                args.src, args.out, split=args.split, max_res=args.max_res, jpeg_quality=args.jpeg_quality,
                compress_prob=args.compress_prob, workers=args.workers, force=args.force, limit=args.limit,
                seed=args.seed, chunksize=args.chunksize, progress=not args.quiet,
            )
        else:
            info = check_beton(args.beton)
            side = info["sidecar"] or {}
            print(f"{args.beton}: ok, {info['num_samples']} samples, {info['file_bytes'] / 2**20:.1f} MiB")
            if side:
                print(f"  classes: {side['num_classes']}  skipped at write: {side['skipped']['count']}")
                print(f"  writer: {json.dumps(side['writer'])}")
                print(f"  source: {json.dumps(side['source'])}")
            else:
                print("  no sidecar JSON beside it")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
