"""Every row of the README's "Errors you may see" table, through the CLI: exit code 2, one
`error: ...` line with the README's message, no traceback, the user's files untouched and no
checkpoint written. Each bad input fails before training (the NaN loss: at its first step).
The tolerated cases (a warning and the run goes on) run in this process."""
from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import FAST_TRAIN, assert_user_error, full_depth, run_cli, run_task
from partialnet.errors import UserError

NO_DATA = [a for a in FAST_TRAIN if not a.startswith("data")]
FOLDER = ["data=imagenet_folder", "data.batch_size=4", "data.num_workers=0", "data.image_size=32",
          "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"]
# The search's smallest job: PartialNet-T0 (small-input stem) on 32x32 synthetic data.
SEARCH = ["data=synthetic", "data.image_size=32", "data.train_size=64", "data.val_size=32", "data.batch_size=32",
          "model=partialnet_t0", "model.small_input=true", "logger=csv", "trainer.accelerator=cpu",
          "trainer.max_epochs=2", "search.warmup_epochs=1", "trainer.enable_progress_bar=false",
          "callbacks.progress_bar=null"]
EVAL_FAST = ["speed.runs=1", "speed.warmup=0", "speed.batch_size=2"]


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


def cli_error(script: str, args: list[str], needles, *, inputs: Path | None = None, out: Path, env=None):
    """Run a CLI that must refuse: exit 2, one error line holding every needle, no traceback,
    ``inputs`` (a file or folder of the user's) byte-identical afterwards, no checkpoint under ``out``."""
    before = (_digest(inputs) if inputs.is_dir() else inputs.read_bytes()) if inputs is not None else None
    proc = run_cli(script, [*args, f"hydra.run.dir={out}/run", f"paths.log_dir={out}/logs"], env=env)
    assert_user_error(proc, *needles)
    if inputs is not None:
        assert (_digest(inputs) if inputs.is_dir() else inputs.read_bytes()) == before, f"{inputs} was changed"
    assert not list(out.rglob("*.ckpt")), "a checkpoint was written"
    return proc


# ------------------------------------------------------------------ train.py: config mistakes

# name: (overrides, needles as the README gives them)
CASES = {
    "unknown model": (["model=partialnet_t9"],
                      ["Could not find 'model/partialnet_t9'; available:", "partialnet_t0", "fasternet_t0"]),
    "unknown data": (["data=imagenet_foldr"], ["Could not find 'data/imagenet_foldr'; available:", "imagenet_folder"]),
    "unknown experiment": (["experiment=partialnet_xl"],
                           ["Could not find 'experiment/partialnet_xl'; available:", "partialnet_t0", "fasternet_t0"]),
    "unknown config key": (["trainer.max_epochz=3"], ["Could not override 'trainer.max_epochz'"]),
    "mlp_ratios of the wrong length": (["model.mlp_ratios=[2,2]"],
                                       ["the mlp_ratios list has 2 mlp_ratios but partialnet_t0 has 4 searchable layers (depths (1, 1, 1, 1))"]),
    "unknown model option": (["+model.drop_path=0.1"], ["model.drop_path is not a model option",
                                                         "model.kwargs.drop_path=..."]),
    "unknown constructor argument": (["+model.kwargs.drop_path=0.1"], ["model 'partialnet_t0' does not take 'drop_path'",
                                                                     "drop_path_rate"]),
    "zero lr": (["optim.base_lr=0"], ["optim.base_lr=0.0 must be > 0 (e.g. optim.base_lr=0.001)"]),
    "negative lr": (["optim.base_lr=-0.1"], ["optim.base_lr=-0.1 must be > 0 (e.g. optim.base_lr=0.001)"]),
    "split ratio 0": (["model.split_ratio=0"], ["split ratio 0 is not realisable at width 32", "pick a ratio in"]),
    "split ratio 1": (["model.split_ratio=1"], ["split ratio 1 is not realisable at width 32", "pick a ratio in"]),
    "split ratio not realisable": (["model.split_ratio=0.01"], [
        "layer 0 (stage 1, block 1): split ratio 0.01 is not realisable at width 32: it gives 0 conv channels; "
        "pick a ratio in [0.03125, 0.9688]"]),
    "batch not divisible": (["data.batch_size=33", "trainer.devices=2", "trainer.strategy=ddp"],
                            ["data.batch_size=33 (global) is not divisible by 2 processes", "use a multiple of 2"]),
    "odd batch with mixup": (["aug=imagenet", "data.batch_size=31"], ["Mixup/CutMix need an even per-device batch", "31"]),
    "gpu without gpu": (["trainer.accelerator=gpu"], ["no CUDA GPU is visible; use trainer.accelerator=cpu"]),
    "checkpoint missing": (["ckpt_path=/no/such/last.ckpt"], ["ckpt_path=/no/such/last.ckpt", "does not exist"]),
    "unknown optimizer": (["optim.name=lamb"], ["optim.name", "lamb"]),
    "multiscale above image size": (["multiscale=[[0,64]]"], ["data.image_size=32", "data.image_size=64"]),
    "unknown nonfinite policy": (["nonfinite=ignore"], ["nonfinite='ignore'", "skip"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_config_mistakes(tmp_path, name):
    overrides, needles = CASES[name]
    if name == "gpu without gpu" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    cli_error("train.py", [*FAST_TRAIN, *overrides], needles, out=tmp_path)


def test_unknown_experiment_lists_every_experiment(tmp_path):
    available = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "experiment").glob("*.yaml"))
    proc = cli_error("train.py", [*FAST_TRAIN, "experiment=partialnet_xl"], ["partialnet_xl"], out=tmp_path)
    listed = re.search(r"available: (.*)$", proc.stderr.strip().splitlines()[-1]).group(1).split(", ")
    assert sorted(listed) == available


# ------------------------------------------------------------------ train.py: data

def test_data_root_missing(tmp_path):
    cli_error("train.py", [*NO_DATA, *FOLDER, f"data.root={tmp_path}/nope"],
              [f"data root {tmp_path}/nope does not exist: set data.root to a folder holding train/<class>/ and val/<class>/"],
              out=tmp_path / "o")
    assert not (tmp_path / "nope").exists()


def test_empty_class_folder(tmp_path):
    root = _folder(tmp_path / "data")
    (root / "train" / "bird").mkdir()
    cli_error("train.py", [*NO_DATA, *FOLDER, f"data.root={root}"],
              [f"class folder {root}/train/bird has no image files ("], inputs=root, out=tmp_path / "o")


@pytest.mark.slow  # a real process; the fast tier has the same error in-process (test_ffcv.py, FFCV import blocked)
def test_ffcv_not_installed(tmp_path):
    """FFCV hidden by a package of the same name first on PYTHONPATH that fails to import, as a
    missing install does."""
    shim = tmp_path / "shim" / "ffcv"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'ffcv'\", name='ffcv')\n")
    beton = tmp_path / "train.beton"
    beton.write_bytes(b"\x00" * 4096)
    cli_error("train.py", [*NO_DATA, "data=cifar10_ffcv", f"data.train_beton={beton}", f"data.val_beton={beton}",
                           "data.batch_size=32", "data.num_workers=1"],
              ["FFCV is not usable (No module named 'ffcv')", "install_ffcv.sh", "data=imagenet_folder"],
              inputs=beton, out=tmp_path / "o", env={"PYTHONPATH": str(tmp_path / "shim")})


def test_truncated_beton(tmp_path):
    pytest.importorskip("ffcv")
    bad = tmp_path / "train.beton"
    bad.write_bytes(b"\x00" * 4096)
    cli_error("train.py", [*NO_DATA, "data=cifar10_ffcv", f"data.train_beton={bad}", f"data.val_beton={bad}",
                           "data.batch_size=32", "data.num_workers=1"],
              [str(bad), ".beton is truncated or corrupt"], inputs=bad, out=tmp_path / "o")


# ------------------------------------------------------------------ train.py: ratios files

def _ratios(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "ratios.yaml"
    f.write_text(text)
    return f


def test_ratios_file_for_another_model(tmp_path):
    f = _ratios(tmp_path, "model: fasternet_t0\nratios: [" + ", ".join(["0.25"] * 13) + "]\n")
    cli_error("train.py", [*FAST_TRAIN, f"model.ratios={f}"],
              [f"ratios file {f} was searched for 'fasternet_t0', not 'partialnet_t0'; use model=fasternet_t0"],
              inputs=f, out=tmp_path / "o")


def test_ratios_file_with_wrong_length(tmp_path):
    f = _ratios(tmp_path, "model: partialnet_t0\nratios: [0.25, 0.5]\n")
    cli_error("train.py", [*full_depth(FAST_TRAIN), f"model.ratios={f}"],
              ["has 2 ratios but partialnet_t0 has 13 searchable layers (depths (1, 2, 8, 2)); give one per block"],
              inputs=f, out=tmp_path / "o")


def test_ratios_file_searched_with_other_constructor_arguments(tmp_path):
    f = _ratios(tmp_path, "model: partialnet_t0\nmodel_kwargs: {num_classes: 10}\nratios: ["
                + ", ".join(["0.25"] * 13) + "]\n")
    # searched with the default (ImageNet) stem; this 32x32 run would build the small-input stem
    cli_error("train.py", [*full_depth(FAST_TRAIN), f"model.ratios={f}", "model.small_input=true"],
              ["small_input=False", "model.small_input=false"], inputs=f, out=tmp_path / "o")
    run = run_task("train", [*full_depth(FAST_TRAIN), f"model.ratios={f}", "model.small_input=false",
                             "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"], tmp_path / "ok")
    assert "val/acc1" in run.result and (tmp_path / "ok" / "checkpoints" / "last.ckpt").is_file()


# ------------------------------------------------------------------ checkpoints

@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("good")
    run_task("train", [*FAST_TRAIN, "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"], out)
    return out / "checkpoints" / "last.ckpt"


def test_checkpoint_missing_for_eval(tmp_path):
    cli_error("eval.py", [f"ckpt={tmp_path}/no/last.ckpt", *EVAL_FAST],
              [f"checkpoint not found: {tmp_path}/no/last.ckpt"], out=tmp_path / "o")


@pytest.mark.parametrize("script", ["eval.py", "train.py"])
def test_checkpoint_truncated(tmp_path, good_ckpt, script):
    bad = tmp_path / "trunc.ckpt"
    bad.write_bytes(good_ckpt.read_bytes()[:4096])
    if script == "eval.py":
        args, needles = [f"ckpt={bad}", *EVAL_FAST], [f"not a readable checkpoint: {bad}", "it may be truncated"]
    else:
        args, needles = [*FAST_TRAIN, f"ckpt_path={bad}"], [f"ckpt_path={bad} is not a checkpoint", "it may be truncated"]
    proc = run_cli(script, [*args, f"hydra.run.dir={tmp_path}/run"])
    assert_user_error(proc, *needles)
    assert bad.read_bytes() == good_ckpt.read_bytes()[:4096], "the file is left as it is"


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "notes.ckpt"
    bad.write_text("these are my notes, not a checkpoint\n")
    cli_error("eval.py", [f"ckpt={bad}", *EVAL_FAST], [f"not a readable checkpoint: {bad}"], inputs=bad, out=tmp_path / "o")


def test_checkpoint_of_another_architecture(tmp_path, good_ckpt):
    before = good_ckpt.read_bytes()
    proc = run_cli("train.py", [*FAST_TRAIN, "model=fasternet_t0", f"ckpt_path={good_ckpt}", f"hydra.run.dir={tmp_path}/t"])
    assert_user_error(proc, f"checkpoint {good_ckpt} does not fit model 'fasternet_t0' (another architecture?)")
    assert good_ckpt.read_bytes() == before
    assert not list(tmp_path.rglob("*.ckpt"))


def test_init_from_weights_of_another_model(tmp_path, good_ckpt):
    before = good_ckpt.read_bytes()
    proc = run_cli("train.py", [*FAST_TRAIN, "model=fasternet_t0", f"model.init_from={good_ckpt}",
                                f"hydra.run.dir={tmp_path}/t"])
    assert_user_error(proc, f"model.init_from={good_ckpt} does not fit this model (",
                      "pass weights of the same model and variant")
    assert good_ckpt.read_bytes() == before
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize("args, needles", [
    (["weights=best"], ["weights='best'", "auto, ema or raw"]),
    (["weights=ema"], ["has no EMA weights", "weights=raw"]),
    (["device=cuda"], ["no CUDA GPU is visible", "device=cpu"]),
], ids=["weights-unknown", "weights-ema-absent", "device-cuda"])
def test_eval_option_mistakes(tmp_path, good_ckpt, args, needles):
    if "device=cuda" in args and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    before = good_ckpt.read_bytes()
    cli_error("eval.py", [f"ckpt={good_ckpt}", *EVAL_FAST, *args], needles, out=tmp_path / "o")
    assert good_ckpt.read_bytes() == before
    assert not (good_ckpt.parent / "eval.json").exists()


def test_eval_with_nothing_to_evaluate(tmp_path):
    cli_error("eval.py", EVAL_FAST, ["nothing to evaluate", "ckpt=PATH"], out=tmp_path / "o")


# ------------------------------------------------------------------ search_dpconv.py

@pytest.mark.parametrize("target", ["search.flops_ratio=2.0", "search.flops_target=5"],
                         ids=["above-dearest", "absolute-above"])  # below the cheapest: test_search_errors.py
def test_infeasible_flops_target_fails_before_training(tmp_path, target):
    key, value = target.split("=")
    cli_error("search_dpconv.py", [*SEARCH, target],
              [f"{key}={float(value):g}", "is not feasible at 32x32: the candidates give", "GMACs",
               "pick a target in that range"], out=tmp_path / "s")
    assert not (tmp_path / "s" / "run" / "ratios.yaml").exists()


# ------------------------------------------------------------------ during training

def test_nan_loss_stops_with_the_step(tmp_path):
    """A learning rate of 1e30 overflows the weights at the first update: the next loss is not finite."""
    proc = run_cli("train.py", [*FAST_TRAIN, "optim.base_lr=1e30", f"hydra.run.dir={tmp_path}/run"])
    assert_user_error(proc, "loss is ", " at step ", "the last good checkpoint is kept: lower optim.base_lr")
    assert re.search(r"error: loss is (nan|inf|-inf) at step [1-9]\d* \(epoch 0\)", proc.stderr), proc.stderr[-500:]


# ------------------------------------------------------------------ tolerated: a warning, the run goes on

def test_non_image_files_are_ignored_with_a_warning(tmp_path):
    root = _folder(tmp_path / "data")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    (root / "train" / "dog" / "labels.csv").write_text("not an image either")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        run = run_task("train", [*NO_DATA, *FOLDER, f"data.root={root}"], tmp_path / "o")
    messages = [str(w.message) for w in rec if "non-image" in str(w.message)]
    assert len(messages) == 1 and "ignored 2 non-image file(s)" in messages[0], messages
    assert "val/acc1" in run.result


def test_corrupt_jpeg_is_skipped_and_counted(tmp_path):
    root = _folder(tmp_path / "data")
    (root / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    before = _digest(root)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        run = run_task("train", [*NO_DATA, *FOLDER, f"data.root={root}", "trainer.limit_train_batches=null"],
                       tmp_path / "o")
    skipped = [str(w.message) for w in rec if "broken.jpg" in str(w.message)]
    assert skipped and "skipped unreadable image" in skipped[0], [str(w.message) for w in rec]
    assert "val/acc1" in run.result
    assert _digest(root) == before


def test_in_process_errors_are_user_errors(tmp_path):
    """The same checks raise UserError when the task is called as a library (no exit)."""
    with pytest.raises(UserError, match=r"optim.base_lr=0.0 must be > 0"):
        run_task("train", [*FAST_TRAIN, "optim.base_lr=0"], tmp_path / "o")
    assert not list(tmp_path.rglob("*.ckpt"))


# ------------------------------------------------------------------ the same, as a real process
@pytest.mark.parametrize("script, args, needle", [
    # an error raised inside the task (Hydra writes a line of its own before re-raising it)
    ("train.py", ["optim.base_lr=0"], "optim.base_lr=0.0 must be > 0"),
    pytest.param("train.py", ["model=partialnet_t9"], "Could not find 'model/partialnet_t9'; available:",
                 marks=pytest.mark.slow),  # fast tier: train.py's real process above, this error in-process
    # eval.py and search_dpconv.py exit through the same partialnet.utils.cli.run_cli as train.py;
    # the fast tier checks their errors in-process, these real processes run in make test-all
    pytest.param("eval.py", ["ckpt=/nonexistent/last.ckpt"], "/nonexistent/last.ckpt", marks=pytest.mark.slow),
    pytest.param("search_dpconv.py", ["search.loss=cubic"], "search.loss='cubic' is unknown", marks=pytest.mark.slow),
])
def test_bad_input_in_a_real_process(tmp_path, script, args, needle):
    """The tests above run the entry points in-process (the same ``main`` under the same
    ``run_cli``); these run a few as a fresh interpreter would: exit status 2 from the process,
    one line on its stderr, no traceback."""
    proc = run_cli(script, [*FAST_TRAIN_ARGS_FOR.get(script, []), *args, f"hydra.run.dir={tmp_path}/run"],
                   subprocess_only=True)
    assert_user_error(proc, needle)
    assert len([ln for ln in proc.stderr.splitlines() if ln.strip()]) == 1, proc.stderr  # nothing else on stderr


FAST_TRAIN_ARGS_FOR = {"train.py": ["data=synthetic", "data.image_size=32", "logger=csv"]}
