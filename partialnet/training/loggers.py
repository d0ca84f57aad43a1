"""Loggers: W&B (offline by default) and an appending CSV logger.

Lightning's CSVLogger deletes an existing ``metrics.csv`` when its directory is not empty,
which would erase a resumed run's history; ``AppendingCSVLogger`` keeps it and appends.
"""
from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

from pytorch_lightning.loggers import CSVLogger, Logger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment

from partialnet.errors import UserError

WANDB_ID_FILE = "wandb_id"


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:  # never delete: pick up the existing header
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = sorted(header)


class AppendingCSVLogger(CSVLogger):
    """CSV metrics in ``<save_dir>/metrics.csv``; a resumed run appends to the same file."""

    def __init__(self, save_dir: str | os.PathLike):
        super().__init__(save_dir=str(save_dir), name="", version="")

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def _wandb_credentials_present() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def wandb_run_id(run_dir: Path) -> str:
    """The run's W&B id: read from ``<run_dir>/wandb_id`` (resume) or created and stored."""
    f = run_dir / WANDB_ID_FILE
    if f.is_file() and f.read_text().strip():
        return f.read_text().strip()
    import uuid

    rid = uuid.uuid4().hex[:12]
    if int(os.environ.get("RANK", "0")) == 0:
        f.write_text(rid)
    return rid


def build_loggers(logger_cfg, run_dir: Path, run_config: dict) -> list[Logger]:
    """CSV always; plus W&B / TensorBoard as selected by the ``logger`` config group."""
    cfg = dict(logger_cfg or {})
    unknown = set(cfg) - {"wandb", "csv", "tensorboard"}
    if unknown:
        raise UserError(f"unknown logger(s) {sorted(unknown)}; choose from wandb, csv, tensorboard, none")
    loggers: list[Logger] = [AppendingCSVLogger(run_dir)]
    if "tensorboard" in cfg:
        from pytorch_lightning.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=""))
    if "wandb" in cfg:
        loggers.append(_build_wandb(dict(cfg["wandb"] or {}), run_dir, run_config))
    return loggers


def _build_wandb(wcfg: dict, run_dir: Path, run_config: dict) -> Logger:
    from pytorch_lightning.loggers import WandbLogger

    mode = str(wcfg.get("mode", "offline"))
    if mode not in ("offline", "online", "disabled"):
        raise UserError(f"logger.wandb.mode={mode!r}; use offline, online or disabled")
    if mode == "online" and not _wandb_credentials_present():
        warnings.warn(
            "logger.wandb.mode=online but no W&B credentials (WANDB_API_KEY or ~/.netrc): "
            "logging offline instead; upload later with `make wandb-sync`",
            stacklevel=2,
        )
        mode = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    logger = WandbLogger(
        project=wcfg.get("project") or "partialnet",
        entity=wcfg.get("entity"),
        group=wcfg.get("group"),
        tags=list(wcfg.get("tags") or []),
        name=run_dir.name,
        save_dir=str(run_dir),
        id=wandb_run_id(run_dir),
        resume="allow",
        mode=mode,
        config=run_config,
    )
    logger._wandb_init.pop("anonymous", None)  # Lightning passes a setting wandb deprecated (warns)
    return logger
