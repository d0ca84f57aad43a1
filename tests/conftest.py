"""Shared test helpers.

- ``run_task`` / ``hydra_task``: compose a CLI's config with Hydra's compose API and call its
  task function in this process, as ``@hydra.main`` would (happy paths: fast, debuggable).
- ``run_cli``: run a script CLI as a user would (in this process unless a real process is asked
  for: signals, several ranks, another environment); ``run_module``: ``python -m MODULE`` in this
  process.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import logging.config  # noqa: F401 - Hydra's dictConfig, see run_entry_point
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator, NamedTuple

import pytest

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

# Small, fast settings for end-to-end runs on synthetic data.
# One block per stage: every block kind (PAT_ch, PAT_sp, PAT_sf) at about a third of the full
# model's time per step. Tests of the registered model's own layer count use full_depth(...).
FAST_DEPTHS = "++model.kwargs.depths=[1,1,1,1]"
FAST_TRAIN = [
    "data=synthetic",
    "data.image_size=32",
    "data.train_size=128",
    "data.val_size=64",
    "data.batch_size=32",
    "model=partialnet_t0",
    "logger=csv",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=1",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_progress_bar=false",
    "callbacks.progress_bar=null",
    FAST_DEPTHS,
]


def full_depth(args: list[str]) -> list[str]:
    """``args`` without :data:`FAST_DEPTHS`: the registered model with its own depths."""
    return [a for a in args if a != FAST_DEPTHS]


@contextlib.contextmanager
def hydra_task(config_name: str, overrides: list[str], run_dir: str | os.PathLike) -> Iterator:
    """Compose ``conf/<config_name>.yaml`` with ``overrides`` and set up Hydra's state as
    ``@hydra.main`` does for a job in ``run_dir`` (``HydraConfig`` with ``runtime.output_dir``,
    so ``${hydra:...}`` and ``paths.output_dir`` resolve); yields the task config (no ``hydra``
    node). Hydra's state is cleared on exit. Not done here (Hydra's own job, tested through the
    CLI): logging set-up and the ``.hydra/`` files."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict, read_write

    from partialnet.utils.rundir import RUN_NAME_ENV, register_resolvers

    register_resolvers()
    run_name = os.environ.get(RUN_NAME_ENV)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3", job_name=config_name):
            cfg = compose(config_name=config_name, overrides=[*overrides, f"hydra.run.dir={run_dir}"],
                          return_hydra_config=True)
        with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
            cfg.hydra.runtime.output_dir = os.path.abspath(run_dir)
        HydraConfig.instance().set_config(cfg)
        task_cfg = copy.deepcopy(cfg)
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        yield task_cfg
    finally:
        HydraConfig.instance().cfg = None
        GlobalHydra.instance().clear()
        if run_name is None:
            os.environ.pop(RUN_NAME_ENV, None)
        else:
            os.environ[RUN_NAME_ENV] = run_name


class TaskRun(NamedTuple):
    result: object  # what the task function returned
    stdout: str  # what it printed (also echoed to the test's own stdout)
    cfg: object  # the task config it was given


def _task_function(config_name: str, run_dir: Path):
    if config_name == "train":
        from partialnet.training.train_task import train

        return train
    if config_name == "search":
        from partialnet.search.search_task import search

        return search
    if config_name == "eval":
        from partialnet.training.eval_task import evaluate

        return lambda cfg: evaluate(cfg, out_dir=Path(run_dir))
    raise ValueError(f"no task for config {config_name!r}")


def run_task(config_name: str, overrides: list[str], run_dir: str | os.PathLike) -> TaskRun:
    """``train.py`` / ``search_dpconv.py`` / ``eval.py`` (``config_name`` train / search / eval)
    run in this process with ``hydra.run.dir=run_dir``. Exceptions (e.g. ``UserError``) propagate."""
    run_dir = Path(run_dir)
    buf = io.StringIO()
    with hydra_task(config_name, overrides, run_dir) as cfg:
        try:
            with contextlib.redirect_stdout(buf):
                result = _task_function(config_name, run_dir)(cfg)
        finally:
            sys.stdout.write(buf.getvalue())
    return TaskRun(result, buf.getvalue(), cfg)


def run_cli(script: str, args: list[str], cwd: Path | None = None, env: dict | None = None, timeout: int = 600,
            subprocess_only: bool = False):
    """Run ``python <script> <args>`` from the repo root; returns a CompletedProcess.

    Without ``cwd``/``env`` the entry point runs in this process (a multirun too: Hydra's basic
    launcher runs its jobs one after another in the calling process)
    (:func:`run_entry_point`: the script's own ``main`` under ``partialnet.utils.cli.run_cli``,
    the exit code from its ``SystemExit``), which spares the seconds of a fresh interpreter's
    imports; ``subprocess_only=True`` (or a ``cwd``/``env``) starts a real process."""
    if not (subprocess_only or cwd or env) and script.endswith(".py"):
        return run_entry_point(script, args)
    full_env = dict(os.environ)
    full_env.update({"PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"})
    full_env.pop("PARTIALNET_RUN_NAME", None)
    for k, v in (env or {}).items():  # None removes a variable
        if v is None:
            full_env.pop(k, None)
        else:
            full_env[k] = v
    return subprocess.run(
        [sys.executable, str(REPO / script), *args],
        cwd=str(cwd or REPO),
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_entry_point(script: str, args: list[str]) -> subprocess.CompletedProcess:
    """``python <script> <args>`` in this process: the script's ``main`` (its ``@hydra.main``)
    through ``partialnet.utils.cli.run_cli`` (see :func:`_in_process` for what is captured and
    restored)."""
    import importlib.util

    from partialnet.utils.cli import run_cli as cli_main

    spec = importlib.util.spec_from_file_location(f"_entry_{Path(script).stem}", REPO / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # Hydra finds config_path next to the script only for a task function of ``__main__``.
    module.main.__wrapped__.__module__ = "__main__"
    return _in_process([str(REPO / script), *args], lambda: cli_main(module.main))


def run_module(module: str, args: list[str]) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` in this process (``runpy`` with ``run_name="__main__"``), as
    :func:`_in_process` runs it. For a module CLI's error cases; where the module's own exit path
    is not the shared ``partialnet.utils.cli.run_cli`` (tested as a real process through the
    scripts), keep one real subprocess for the interpreter's exit code."""
    import runpy
    import warnings

    def call():
        with warnings.catch_warnings():  # runpy warns when the package already imported the module
            warnings.simplefilter("ignore", RuntimeWarning)
            # alter_sys=False: sys.modules["__main__"] stays the test worker's own (pytest-xdist's
            # worker runs there); the module still runs with __name__ == "__main__" and our sys.argv.
            runpy.run_module(module, run_name="__main__", alter_sys=False)

    return _in_process([module, *args], call)


def _in_process(argv: list[str], call) -> subprocess.CompletedProcess:
    """Run ``call()`` as a process would run it: ``sys.argv`` set, stdout/stderr captured, the exit
    code taken from ``SystemExit`` (an escaping exception prints its traceback to the captured
    stderr and gives 1, as the interpreter would). Environment, argv, the root logger and Hydra's
    global state are restored afterwards."""
    import traceback

    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    out, err = io.StringIO(), io.StringIO()
    saved_argv, saved_env = sys.argv, dict(os.environ)
    # Hydra configures logging with dictConfig, which closes every existing handler (pytest's own
    # log capture among them): hide them from it and put the root logger back afterwards.
    root = logging.getLogger()
    saved_root, saved_level, saved_list = root.handlers[:], root.level, logging._handlerList[:]
    del logging._handlerList[:]
    code = 0
    try:
        sys.argv = list(argv)
        os.environ.pop("PARTIALNET_RUN_NAME", None)
        os.environ["WANDB_SILENT"] = "true"
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _process_warnings(err):
            try:
                call()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:  # noqa: BLE001 - what the interpreter would print
                traceback.print_exc()
                code = 1
    finally:
        for handler in root.handlers:
            if handler not in saved_root:
                handler.close()
        root.handlers[:] = saved_root
        root.setLevel(saved_level)
        logging._handlerList[:] = saved_list
        sys.argv = saved_argv
        _restore_environ(saved_env)
        HydraConfig.instance().cfg = None
        GlobalHydra.instance().clear()
    return subprocess.CompletedProcess([sys.executable, *argv], code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def _process_warnings(err: io.StringIO) -> Iterator[None]:
    """Warnings as a fresh interpreter shows them: its default filters (each warning once per
    place; deprecation, import and resource warnings hidden), written to ``err``. Without this,
    pytest records them instead, and whether a warning reaches stderr would depend on which
    earlier test configured the warnings module (e.g. routed it to logging)."""
    import warnings

    with warnings.catch_warnings():
        warnings.resetwarnings()
        warnings.simplefilter("default")
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.filterwarnings("ignore", category=category)
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: err.write(
            warnings.formatwarning(message, category, filename, lineno, line))
        yield


def _restore_environ(saved: dict) -> None:
    """Put ``os.environ`` back to ``saved``, touching only the variables that changed (clearing
    and refilling it would call setenv for every variable while native threads of the test
    process may be reading the environment)."""
    for key in [k for k in os.environ if k not in saved]:
        del os.environ[key]
    for key, value in saved.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tests run many small ops: one intra-op thread is as fast, and far faster on busy cores
    (spinning OpenMP threads). `make test` also sets OMP_NUM_THREADS=1 for subprocesses.

    Set before every test, not once per worker: FFCV's loader sets the process's thread count to
    its worker count, and a later in-process run on two threads computes conv gradients in another
    order than the one-thread real process it is compared with (the mid-epoch resume test)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def repo() -> Path:
    return REPO


def assert_user_error(proc, *needles: str) -> None:
    """Exit 2, one 'error' line on stderr naming the needles, no traceback."""
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout:{proc.stdout[-2000:]}\nstderr:{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    err_lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(("error", "config error"))]
    assert len(err_lines) == 1, proc.stderr[-3000:]
    for n in needles:
        assert n in err_lines[0], f"{n!r} not in {err_lines[0]!r}"


def randomize_batch_norm_(bn) -> None:
    """Non-trivial affine parameters and running statistics for a batch norm (tests comparing a
    rewritten norm with the module itself), in place."""
    import torch

    with torch.no_grad():
        if bn.weight is not None:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
        if bn.running_mean is not None:
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
