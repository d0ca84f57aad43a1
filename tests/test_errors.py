"""Every row of the README's "Errors you may see" table: the one-line message, exit code 2,
no traceback, nothing on disk damaged (or, for the tolerated cases, a warning and a run)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from PIL import Image

from conftest import FAST_TRAIN, assert_user_error, run_cli

NO_DATA = [a for a in FAST_TRAIN if not a.startswith("data")]
FOLDER = ["data=imagenet_folder", "data.batch_size=4", "data.num_workers=0", "data.image_size=32",
          "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"]


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def _folder(root: Path, classes=("cat", "dog"), n=4) -> Path:
    for split in ("train", "val"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (40, 40), (40 * i, 100, 200 if c == "cat" else 20)).save(d / f"{i}.jpg")
    return root


CASES = {
    "unknown model": (["model=partialnet_t9"], ["partialnet_t9", "partialnet_t0"]),
    "unknown data": (["data=imagenet_foldr"], ["imagenet_foldr", "imagenet_folder"]),
    "unknown experiment": (["experiment=partialnet_xl"], ["partialnet_xl"]),
    "unknown config key": (["trainer.max_epochz=3"], ["max_epochz"]),
    "zero lr": (["optim.base_lr=0"], ["optim.base_lr=0"]),
    "negative lr": (["optim.base_lr=-0.1"], ["optim.base_lr=-0.1"]),
    "split ratio 0": (["model.split_ratio=0"], ["split ratio 0", "width 32"]),
    "split ratio 1": (["model.split_ratio=1"], ["split ratio 1", "width 32"]),
    "split ratio not realisable": (["model.split_ratio=0.01"], ["0.01", "width 32"]),
    "batch not divisible": (["data.batch_size=33", "trainer.devices=2", "trainer.strategy=ddp"], ["33", "divisible"]),
    "odd batch with mixup": (["aug=imagenet", "data.batch_size=31"], ["even", "31"]),
    "gpu without gpu": (["trainer.accelerator=gpu"], ["trainer.accelerator=gpu", "cpu"]),
    "checkpoint missing": (["ckpt_path=/no/such/last.ckpt"], ["/no/such/last.ckpt"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_config_mistakes(tmp_path, name):
    overrides, needles = CASES[name]
    if name == "gpu without gpu":
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    base = NO_DATA + ["data=synthetic", "data.batch_size=32"] if any(o.startswith("data.batch") for o in overrides) else FAST_TRAIN
    proc = run_cli("train.py", base + [f"paths.log_dir={tmp_path}", *overrides])
    assert_user_error(proc, *needles)
    assert not list(tmp_path.rglob("*.ckpt"))


def test_data_root_missing(tmp_path):
    proc = run_cli("train.py", NO_DATA + FOLDER + [f"data.root={tmp_path}/nope", f"paths.log_dir={tmp_path}"])
    assert_user_error(proc, f"{tmp_path}/nope")


def test_empty_class_folder(tmp_path):
    root = _folder(tmp_path / "data")
    (root / "train" / "bird").mkdir()
    before = _digest(root)
    proc = run_cli("train.py", NO_DATA + FOLDER + [f"data.root={root}", f"paths.log_dir={tmp_path}/o"])
    assert_user_error(proc, "bird", "no image files")
    assert _digest(root) == before


def test_non_image_files_are_ignored_with_a_warning(tmp_path):
    root = _folder(tmp_path / "data")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    proc = run_cli("train.py", NO_DATA + FOLDER + [f"data.root={root}", f"paths.log_dir={tmp_path}/o"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "non-image" in proc.stderr and "1" in proc.stderr


def test_corrupt_jpeg_is_skipped_and_counted(tmp_path):
    root = _folder(tmp_path / "data")
    (root / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    before = _digest(root)
    proc = run_cli("train.py", NO_DATA + FOLDER + [f"data.root={root}", f"paths.log_dir={tmp_path}/o",
                                                     "trainer.limit_train_batches=null"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "broken.jpg" in proc.stderr
    assert _digest(root) == before


def test_ratios_file_for_another_model(tmp_path):
    f = tmp_path / "ratios.yaml"
    f.write_text("model: fasternet_t0\nratios: [0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25]\n")
    before = f.read_bytes()
    proc = run_cli("train.py", FAST_TRAIN + [f"model.ratios={f}", f"paths.log_dir={tmp_path}/o"])
    assert_user_error(proc, "fasternet_t0", "partialnet_t0")
    assert f.read_bytes() == before


def test_ratios_file_with_wrong_length(tmp_path):
    f = tmp_path / "ratios.yaml"
    f.write_text("model: partialnet_t0\nratios: [0.25, 0.5]\n")
    proc = run_cli("train.py", FAST_TRAIN + [f"model.ratios={f}", f"paths.log_dir={tmp_path}/o"])
    assert_user_error(proc, "2", "13")


@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("good")
    proc = run_cli("train.py", FAST_TRAIN + [f"hydra.run.dir={out}", "trainer.limit_train_batches=1",
                                             "trainer.limit_val_batches=1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "checkpoints" / "last.ckpt"


def test_checkpoint_truncated(tmp_path, good_ckpt):
    bad = tmp_path / "trunc.ckpt"
    bad.write_bytes(good_ckpt.read_bytes()[:4096])
    before = bad.read_bytes()
    for script, arg in (("eval.py", f"ckpt={bad}"), ("train.py", f"ckpt_path={bad}")):
        extra = FAST_TRAIN if script == "train.py" else []
        proc = run_cli(script, extra + [arg, f"hydra.run.dir={tmp_path}/{script}"])
        assert_user_error(proc, "trunc.ckpt")
    assert bad.read_bytes() == before


def test_checkpoint_of_another_architecture(tmp_path, good_ckpt):
    before = good_ckpt.read_bytes()
    proc = run_cli("train.py", FAST_TRAIN + ["model=fasternet_t0", f"ckpt_path={good_ckpt}", f"hydra.run.dir={tmp_path}/t"])
    assert_user_error(proc, "fasternet_t0")
    assert good_ckpt.read_bytes() == before


def test_wandb_online_without_network_falls_back(tmp_path):
    args = [a for a in FAST_TRAIN if not a.startswith("logger=")] + [
        "logger=wandb", "logger.wandb.mode=online", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
        f"hydra.run.dir={tmp_path}"]
    proc = run_cli("train.py", args, env={"WANDB_API_KEY": None, "NETRC": str(tmp_path / "none")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "falls back" in proc.stderr or "offline instead" in proc.stderr
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_ratios_file_searched_with_other_constructor_arguments(tmp_path):
    f = tmp_path / "ratios.yaml"
    f.write_text("model: partialnet_t0\nmodel_kwargs: {num_classes: 10}\nratios: [" + ", ".join(["0.25"] * 13) + "]\n")
    # searched with the default (ImageNet) stem; this 32x32 run would build the small-input stem
    proc = run_cli("train.py", FAST_TRAIN + [f"model.ratios={f}", "model.small_input=true", f"paths.log_dir={tmp_path}/o"])
    assert_user_error(proc, "small_input=False", "model.small_input=false")
    ok = run_cli("train.py", FAST_TRAIN + [f"model.ratios={f}", "model.small_input=false", "trainer.limit_train_batches=1",
                                           "trainer.limit_val_batches=1", f"paths.log_dir={tmp_path}/o2"])
    assert ok.returncode == 0, ok.stderr[-3000:]


def test_truncated_beton(tmp_path):
    pytest.importorskip("ffcv")
    bad = tmp_path / "train.beton"
    bad.write_bytes(b"\x00" * 4096)
    before = bad.read_bytes()
    proc = run_cli("train.py", NO_DATA + ["data=cifar10_ffcv", f"data.train_beton={bad}", f"data.val_beton={bad}",
                                          "data.batch_size=32", "data.num_workers=1", f"paths.log_dir={tmp_path}/o"])
    assert_user_error(proc, str(bad))
    assert bad.read_bytes() == before
