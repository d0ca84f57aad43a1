"""FFCV pipeline: .beton writer, loaders, Lightning integration, train.py/eval.py, failure modes.

The images are made here (smooth random colour fields, one base colour per class, saved as JPEG), so
nothing is skipped when ``../shared`` is absent. Every test that needs FFCV carries the
``requires_ffcv`` mark and skips when ``ffcv`` is not installed; the last test (FFCV import
blocked) runs everywhere, since it checks the fallback a user without FFCV sees.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli, run_module
from partialnet.errors import UserError

N_CLASSES, PER_CLASS = 4, 10
BATCH = 8
CLASS_COLOURS = ((200, 40, 40), (40, 180, 60), (50, 70, 210), (210, 200, 60))

requires_ffcv = pytest.mark.requires_ffcv
# numba's dispatcher finalizer raises a harmless KeyError when FFCV's per-Loader JIT functions are
# garbage-collected (FFCV re-jits the same Python functions for every Loader); a training run keeps
# its loaders alive, the tests drop several. Collect them here, inside the module, and ignore it.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in.*finalize object:pytest.PytestUnraisableExceptionWarning"
)


@pytest.fixture(scope="module", autouse=True)
def _collect_jit_garbage():
    yield
    import gc

    gc.collect()


@pytest.fixture(scope="module")
def ffcv_mod():
    return pytest.importorskip("ffcv")


def make_jpeg(rng: np.random.Generator, label: int, size: tuple[int, int] = (32, 32), quality: int = 95) -> bytes:
    """A photo-like JPEG: a smooth random colour field (bicubic upsampling of a 4x4 grid) over the class colour."""
    grid = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    field = np.asarray(grid.resize(size, Image.BICUBIC), dtype=np.float32)
    img = (0.4 * field + 0.6 * np.asarray(CLASS_COLOURS[label % len(CLASS_COLOURS)], np.float32)).round()
    buf = io.BytesIO()
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def jpegs():
    """{class: [jpeg bytes, ...]} for N_CLASSES classes x PER_CLASS images, 32x32."""
    rng = np.random.default_rng(0)
    return {f"class{c}": [make_jpeg(rng, c) for _ in range(PER_CLASS)] for c in range(N_CLASSES)}


@pytest.fixture(scope="module")
def img_dir(tmp_path_factory, jpegs):
    root = tmp_path_factory.mktemp("folder")
    for cls, blobs in jpegs.items():
        (root / cls).mkdir()
        for i, b in enumerate(blobs):
            (root / cls / f"{i:03d}.jpg").write_bytes(b)
    return root


@pytest.fixture(scope="module")
def beton(ffcv_mod, img_dir, tmp_path_factory):
    from partialnet.data.ffcv import write_beton

    out = tmp_path_factory.mktemp("beton") / "train.beton"
    write_beton(str(img_dir), out, max_res=64, workers=2, progress=False)
    return out


@pytest.fixture(scope="module")
def dm(beton):
    from partialnet.data.ffcv import FFCVDataModule

    return FFCVDataModule(
        str(beton), str(beton), batch_size=BATCH, num_workers=2, image_size=32, crop_pct=1.0,
        multiscale=[[0, 32], [1, 40]], seed=7,
    )


def _folder_samples(root: Path):
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    return [(f, i) for i, c in enumerate(classes) for f in sorted((root / c).glob("*.jpg"))]


# ---------------------------------------------------------------------------------------------
@requires_ffcv
def test_write_read_back(beton, img_dir):
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import ToTensor

    samples = _folder_samples(img_dir)
    side = json.loads(Path(str(beton) + ".json").read_text())
    assert side["num_samples"] == len(samples) == N_CLASSES * PER_CLASS
    assert side["num_classes"] == N_CLASSES and side["class_names"] == sorted(p.name for p in img_dir.iterdir())
    assert side["class_counts"] == [PER_CLASS] * N_CLASSES
    assert side["skipped"]["count"] == 0 and side["file_bytes"] == beton.stat().st_size
    assert side["writer"]["max_resolution"] == 64 and side["writer"]["jpeg_quality"] == 90

    loader = Loader(str(beton), batch_size=len(samples), num_workers=1, order=OrderOption.SEQUENTIAL,
                    drop_last=False, pipelines={"image": [SimpleRGBImageDecoder(), ToTensor()],
                                                "label": [IntDecoder(), ToTensor()]})
    (images, labels), = list(loader)
    assert labels.reshape(-1).tolist() == [lab for _, lab in samples]
    src = np.stack([np.asarray(Image.open(f).convert("RGB")) for f, _ in samples]).astype(np.float32)
    diff = np.abs(images.numpy().astype(np.float32) - src).mean(axis=(1, 2, 3))
    # raw samples are exact, JPEG-q90 re-encoded ones close
    assert diff.mean() < 2.5 and diff.max() < 6.0, diff
    assert (diff == 0).sum() >= 5  # about half are stored raw (compress_prob 0.5)


@requires_ffcv
def test_refuses_overwrite_and_force(ffcv_mod, img_dir, tmp_path):
    from partialnet.data.ffcv import main

    out = tmp_path / "small.beton"
    assert main(["write", "--src", str(img_dir), "--out", str(out), "--limit", "6", "--workers", "1", "--quiet"]) == 0
    before = out.read_bytes()
    r = run_module("partialnet.data.ffcv", ["write", "--src", str(img_dir), "--out", str(out)])
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--force" in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert out.read_bytes() == before
    assert main(["write", "--src", str(img_dir), "--out", str(out), "--limit", "8", "--workers", "1", "--quiet",
                 "--force"]) == 0
    assert json.loads(Path(str(out) + ".json").read_text())["num_samples"] == 8
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


@requires_ffcv
def test_corrupt_images_skipped_and_counted(ffcv_mod, jpegs, tmp_path):
    from partialnet.data.ffcv import FFCVDataModule, write_beton

    root = tmp_path / "src"
    blobs = jpegs[sorted(jpegs)[0]]
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            (root / cls / f"{i}.jpg").write_bytes(blobs[i])
    # variable sizes: upsampled photos
    for i, (w, h) in enumerate([(48, 40), (64, 64), (40, 56)]):
        buf = io.BytesIO()
        Image.open(io.BytesIO(blobs[5 + i])).resize((w, h), Image.BICUBIC).save(buf, "JPEG", quality=90)
        (root / "b" / f"big{i}.jpg").write_bytes(buf.getvalue())
    (root / "a" / "truncated.jpg").write_bytes(blobs[4][: len(blobs[4]) // 2])
    (root / "b" / "garbage.jpg").write_bytes(b"not an image at all" * 10)
    out = tmp_path / "c.beton"
    side = write_beton(str(root), out, workers=1, progress=False)
    assert side["num_samples"] == 9 and side["class_counts"] == [3, 6]
    assert side["skipped"]["count"] == 2
    assert sorted(Path(s["path"]).name for s in side["skipped"]["files"]) == ["garbage.jpg", "truncated.jpg"]
    # the variable-size file decodes through the eval pipeline
    d = FFCVDataModule(str(out), str(out), batch_size=4, num_workers=1, image_size=24, crop_pct=0.875)
    assert d.num_classes == 2
    ys = []
    for x, y in d.val_dataloader():
        assert x.shape[1:] == (3, 24, 24) and x.dtype == torch.float32 and torch.isfinite(x).all()
        ys += y.tolist()
    assert ys == [0, 0, 0] + [1] * 6


@requires_ffcv
@pytest.mark.timeout(120)
@pytest.mark.parametrize("exit_code, sigint", [(3, "python"), (3, "ignored"), (0, "python")])
def test_dead_writer_worker_is_an_error_not_a_hang(ffcv_mod, img_dir, tmp_path, monkeypatch, exit_code, sigint):
    """FFCV's writer waits forever for a dead worker; ours stops and reports it.

    Also with SIGINT ignored (Lightning leaves SIGINT at SIG_IGN/SIG_DFL after some runs, and the
    old watchdog's interrupt_main() was then silently dropped: the hang of a full test run), and for
    a worker that exits with status 0 before its work is done (seen through its sentinel).
    """
    from partialnet.data.ffcv import writer as W

    orig = W._ImageDataset.__getitem__

    def dies_on_7(self, i):
        if i == 7:
            os._exit(exit_code)  # in the forked writer worker only
        return orig(self, i)

    monkeypatch.setattr(W._ImageDataset, "__getitem__", dies_on_7)
    out = tmp_path / "w.beton"
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if sigint == "ignored" else None
    try:
        with pytest.raises(UserError, match="worker process died"):
            W.write_beton(str(img_dir), out, workers=2, progress=False)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    assert list(tmp_path.iterdir()) == []  # no .beton, no sidecar, no temp files
    import ffcv.writer

    assert ffcv.writer.sleep.__module__ == "time" and ffcv.writer.Queue.__module__ != W.__name__  # names restored


def test_writer_watch_tells_a_finished_write_from_a_lost_one():
    """Every worker gone is an error only while the progress counter is short of the total
    (or a queue read waits for data no one can send); a finished write is never one."""
    import multiprocessing

    from partialnet.data.ffcv.internals import WriterWatch, WriterWorkerDied

    fork = multiprocessing.get_context("fork")
    watch = WriterWatch(total=5)
    worker = fork.Process(target=int)
    worker.start()
    worker.join()
    watch.workers.append(worker)
    done = fork.Value("Q", 5)
    watch.counters.append(done)
    for _ in range(3):  # the writer polls once more after its last progress read
        watch.check()
    done.value = 4
    with pytest.raises(WriterWorkerDied, match="every worker exited"):
        watch.check()
    done.value = 5
    with pytest.raises(WriterWorkerDied):
        watch.check(waiting_on_queue=True)


@requires_ffcv
def test_truncated_beton_is_a_user_error(beton, tmp_path):
    from partialnet.data.ffcv import FFCVDataModule, check_beton

    bad = tmp_path / "bad.beton"
    data = beton.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    shutil.copy(str(beton) + ".json", str(bad) + ".json")
    with pytest.raises(UserError) as e:
        FFCVDataModule(str(bad), None, batch_size=8, num_workers=1)
    msg = str(e.value)
    assert "\n" not in msg and "truncated" in msg and str(bad) in msg
    os.remove(str(bad) + ".json")  # without the sidecar the header check still catches it
    with pytest.raises(UserError, match="truncated"):
        check_beton(bad)
    (tmp_path / "x.beton").write_bytes(b"\x07" * 100)
    with pytest.raises(UserError, match="not an FFCV .beton"):
        check_beton(tmp_path / "x.beton")
    (tmp_path / "zeros.beton").write_bytes(b"\x00" * 4096)
    with pytest.raises(UserError, match="zeros.beton is truncated or corrupt"):
        check_beton(tmp_path / "zeros.beton")
    with pytest.raises(UserError, match="not found"):
        FFCVDataModule(str(tmp_path / "missing.beton"), None, num_workers=1)


@requires_ffcv
def test_without_a_sidecar_the_classes_come_from_the_labels(beton, tmp_path):
    from partialnet.data.ffcv import FFCVDataModule, check_beton

    bare = tmp_path / "bare.beton"
    shutil.copy(beton, bare)
    assert check_beton(bare)["sidecar"] is None
    d = FFCVDataModule(str(bare), None, batch_size=BATCH, num_workers=1)
    assert d.num_classes == N_CLASSES and d.class_names == [str(i) for i in range(N_CLASSES)]


@requires_ffcv
def test_batch_size_must_divide_world_size(dm):
    from types import SimpleNamespace

    from partialnet.data.ffcv import FFCVDataModule

    d = FFCVDataModule(dm.train_beton, None, batch_size=10, num_workers=1)
    d.trainer = SimpleNamespace(world_size=4, global_rank=0, current_epoch=0)
    with pytest.raises(UserError, match="data.batch_size=10 .* not divisible by the world size 4"):
        d.setup("fit")
    d.trainer = SimpleNamespace(world_size=2, global_rank=1, current_epoch=0)
    d.setup("fit")
    assert d.per_device_batch_size == 5


class _Tiny(torch.nn.Module):
    def __init__(self, n):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.fc = torch.nn.Linear(8, n)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def _lit(num_classes):
    import pytorch_lightning as pl

    class Lit(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _Tiny(num_classes)
            self.seen = {}  # epoch -> [(resolution, labels)]

        def training_step(self, batch, _):
            x, y = batch
            assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
            self.seen.setdefault(self.current_epoch, []).append((x.shape[-1], y.tolist()))
            loss = torch.nn.functional.cross_entropy(self.net(x), y)
            self.log("train/loss", loss)
            return loss

        def validation_step(self, batch, _):
            x, y = batch
            self.log("val/loss", torch.nn.functional.cross_entropy(self.net(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Lit()


def _trainer(tmp_path, max_epochs, **kw):
    import pytorch_lightning as pl

    kw.setdefault("enable_checkpointing", bool(kw.get("callbacks")))
    return pl.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, use_distributed_sampler=False,
                      logger=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=str(tmp_path), **kw)


def _ckpt_callbacks(ck: Path, every_steps: int):
    from pytorch_lightning.callbacks import ModelCheckpoint

    return [ModelCheckpoint(dirpath=str(ck), filename="ep{epoch}", every_n_epochs=1, save_top_k=-1,
                            auto_insert_metric_name=False),
            ModelCheckpoint(dirpath=str(ck), filename="step{step}", every_n_train_steps=every_steps, save_top_k=-1,
                            auto_insert_metric_name=False)]


@requires_ffcv
@pytest.mark.slow  # ~15 s of FFCV loaders; the fast tier checks the same order and skip on the loader itself
def test_lightning_fit_multiscale_and_exact_resume(dm, tmp_path):
    assert dm.num_classes == N_CLASSES
    steps = N_CLASSES * PER_CLASS // BATCH
    ck = tmp_path / "ckpt"
    # two straight epochs (the schedule switches 32 -> 40 px at epoch 1), saving checkpoints at
    # the end of epoch 0 and mid-epoch 1 (global step steps + 2)
    m = _lit(dm.num_classes)
    t = _trainer(tmp_path, 2, callbacks=_ckpt_callbacks(ck, steps + 2))
    t.fit(m, datamodule=dm)
    assert t.global_step == 2 * steps
    assert {r for r, _ in m.seen[0]} == {32} and {r for r, _ in m.seen[1]} == {40}
    labels0 = [lab for _, ys in m.seen[0] for lab in ys]
    labels1 = [lab for _, ys in m.seen[1] for lab in ys]
    assert sorted(labels0) == sorted(labels1) and labels0 != labels1  # reshuffled each epoch
    assert "val/loss" in t.callback_metrics
    saved = torch.load(ck / "ep0.ckpt", weights_only=False)
    assert saved["FFCVDataModule"]["seed"] == 7
    # resume from each: the resumed run sees exactly the straight run's remaining epoch-1 batches
    for name, skip in ((f"step{steps + 2}.ckpt", 2), ("ep0.ckpt", 0)):
        m2 = _lit(dm.num_classes)
        _trainer(tmp_path, 2, callbacks=_ckpt_callbacks(ck, steps + 2)).fit(m2, datamodule=dm, ckpt_path=str(ck / name))
        assert list(m2.seen) == [1], name
        assert [lab for _, ys in m2.seen[1] for lab in ys] == labels1[skip * BATCH:], name


@requires_ffcv
def test_order_is_a_function_of_seed_and_epoch(dm):
    dm.trainer = None
    dm.load_state_dict({"seed": 7, "epoch": 0})
    loader = dm.train_dataloader()
    per_epoch = [[y.tolist() for _, y in loader] for _ in range(2)]
    assert dm.state_dict()["epoch"] == 2
    dm.load_state_dict({"seed": 7, "epoch": 1})
    assert [y.tolist() for _, y in loader] == per_epoch[1]
    # mid-epoch resume: the checkpoint's position (epoch, batches done) skips those batches, once
    dm.load_state_dict({"seed": 7, "epoch": 1, "position": (1, 2)})
    assert [y.tolist() for _, y in dm.train_dataloader()] == per_epoch[1][2:]
    assert len([y.tolist() for _, y in loader]) == len(per_epoch[0])  # epoch 2: whole again


@requires_ffcv
def test_device_pipeline_matches_cpu_pipeline(beton):
    """The GPU path (ToDevice + torch normalisation) run with device=cpu equals the CPU path."""
    from ffcv.loader import Loader, OrderOption

    from partialnet.data.ffcv import build_pipelines

    outs = {}
    for name, kw in {"cpu": {}, "dev32": {"device": torch.device("cpu"), "dtype": torch.float32},
                     "dev16": {"device": torch.device("cpu"), "dtype": torch.float16}}.items():
        pipes, _ = build_pipelines("val", 32, crop_pct=0.875, **kw)
        ld = Loader(str(beton), batch_size=40, num_workers=1, order=OrderOption.SEQUENTIAL, drop_last=False,
                    pipelines=pipes)
        (x, y), = [(a.clone(), b.clone()) for a, b in ld]
        outs[name] = (x, y)
    x, y = outs["cpu"]
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(outs["dev32"][1].reshape(-1), y.reshape(-1))
    assert torch.allclose(outs["dev32"][0], x, atol=1e-5)
    assert outs["dev16"][0].dtype == torch.float16
    assert outs["dev16"][0].is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(outs["dev16"][0].float(), x, atol=2e-2)


@requires_ffcv
def test_num_workers_above_the_cores_is_clamped_with_one_warning(beton):
    """data.num_workers: 8 on a 2-core machine used to fail as 'cannot open ... train.beton' (numba's limit)."""
    from partialnet.data.ffcv import FFCVDataModule
    from partialnet.data.ffcv.datamodule import available_threads

    avail = available_threads()
    assert 1 <= avail <= len(os.sched_getaffinity(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d = FFCVDataModule(str(beton), str(beton), batch_size=BATCH, num_workers=avail + 6, image_size=32)
    msgs = [str(w.message) for w in caught if "num_workers" in str(w.message)]
    assert len(msgs) == 1 and "\n" not in msgs[0], msgs
    assert f"data.num_workers={avail + 6}" in msgs[0] and f"using {avail} FFCV threads" in msgs[0]
    assert d.num_workers == avail
    assert sum(len(y) for _, y in d.val_dataloader()) == N_CLASSES * PER_CLASS
    assert FFCVDataModule(str(beton), None, batch_size=BATCH, num_workers=0).num_workers == avail  # 0 = all
    with pytest.raises(UserError, match="data.num_workers=-1"):
        FFCVDataModule(str(beton), None, batch_size=BATCH, num_workers=-1)


@requires_ffcv
@pytest.mark.slow
def test_train_py_and_eval_py_on_ffcv_files(beton, tmp_path):
    """A user's path: train.py data=imagenet_ffcv on .beton files for a few steps, then eval.py on its checkpoint.

    Runs with the config's num_workers (8), so on a small machine it also shows the clamp warning
    instead of the old error blaming the file.
    """
    run = tmp_path / "run"
    proc = run_cli("train.py", [
        "data=imagenet_ffcv", f"data.train_beton={beton}", f"data.val_beton={beton}", "data.image_size=32",
        "data.batch_size=8", "model=partialnet_t0", "logger=csv", "trainer.accelerator=cpu", "trainer.max_epochs=1",
        "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false", "callbacks.progress_bar=null",
        f"hydra.run.dir={run}",
    ])
    assert proc.returncode == 0, proc.stderr[-3000:]
    if len(os.sched_getaffinity(0)) < 8:
        assert "data.num_workers=8 is more than the" in proc.stderr
    ckpt = run / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert saved["global_step"] == N_CLASSES * PER_CLASS // 8
    assert saved["FFCVDataModule"]["global_batch_size"] == 8 and saved["FFCVDataModule"]["train_resolution"] == 32
    proc = run_cli("eval.py", [f"ckpt={ckpt}", "speed.runs=2", "speed.warmup=1", "speed.batch_size=2",
                               f"hydra.run.dir={tmp_path}/eval"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((run / "checkpoints" / "eval.json").read_text())
    assert res["model"] == "partialnet_t0" and 0 <= res["val/acc1"] <= 100


def _idx(path: Path, arr: np.ndarray) -> None:
    import gzip
    import struct

    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes())


def test_writer_sources_read_through_the_project_readers(tmp_path, jpegs):
    """--src cifar10:ARCHIVE, fashion_mnist:DIR and DIR go through cifar10.read_archive,
    fashion_mnist.load_split and TolerantImageFolder (their checks and errors included)."""
    import tarfile

    from partialnet.data.ffcv.sources import resolve_source

    arch = tmp_path / "c10.tar.gz"
    with tarfile.open(arch, "w:gz") as tar:
        for split, n in (("train", 3), ("test", 2)):
            for cls in ("b", "a"):
                for i in range(n):
                    data = jpegs[sorted(jpegs)[0]][i]
                    info = tarfile.TarInfo(f"cifar/{split}/{cls}/{i}.jpg")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    tr, te = resolve_source(f"cifar10:{arch}", "train"), resolve_source(f"cifar10:{arch}", "test")
    assert tr.classes == te.classes == ["a", "b"] and tr.labels == [0, 0, 0, 1, 1, 1] and te.labels == [0, 0, 1, 1]
    assert tr.blobs[0] == jpegs[sorted(jpegs)[0]][0] and tr.kind == "cifar10"

    fm = tmp_path / "fm"
    fm.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 4)):
        _idx(fm / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _idx(fm / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8))
    src = resolve_source(f"fashion_mnist:{fm}", "test")
    assert src.arrays.shape == (4, 28, 28) and src.labels == [0, 1, 2, 3] and src.classes[0] == "T-shirt/top"
    _idx(fm / "t10k-labels-idx1-ubyte.gz", np.arange(3, dtype=np.uint8))  # 4 images, 3 labels
    with pytest.raises(UserError, match="4 images but .* 3 labels"):  # load_split's own check
        resolve_source(f"fashion_mnist:{fm}", "test")

    root = tmp_path / "folder"
    for cls, n in (("x", 2), ("y", 0)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            (root / cls / f"{i}.jpg").write_bytes(jpegs[sorted(jpegs)[1]][i])
    with pytest.raises(UserError, match="class folder .*y has no image files"):  # scan_image_folder's check
        resolve_source(str(root))
    (root / "y" / "0.png").write_bytes(jpegs[sorted(jpegs)[1]][2])
    src = resolve_source(str(root))
    assert src.classes == ["x", "y"] and src.labels == [0, 0, 1] and src.names[-1].endswith("y/0.png")
    for d in ("train", "val"):
        (tmp_path / "splits" / d / "c").mkdir(parents=True)
    with pytest.raises(UserError, match="split folders"):
        resolve_source(str(tmp_path / "splits"))


def test_missing_ffcv_is_a_one_line_user_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ffcv", None)
    from partialnet.data.ffcv import FFCVDataModule, main

    with pytest.raises(UserError) as e:
        FFCVDataModule(str(tmp_path / "train.beton"), str(tmp_path / "val.beton"))
    msg = str(e.value)
    assert "\n" not in msg and "bash scripts/install_ffcv.sh" in msg and "data=imagenet_folder" in msg
    (tmp_path / "d" / "c").mkdir(parents=True)
    assert main(["write", "--src", str(tmp_path / "d"), "--out", str(tmp_path / "o.beton"), "--quiet"]) == 2
