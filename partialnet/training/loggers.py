"""Loggers from the ``logger`` config (``_target_`` configs): W&B (offline by default), TensorBoard, CSV.

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
from partialnet.utils.atomic import atomic_write_text
from partialnet.utils.distributed import is_rank_zero
from partialnet.utils.instantiate import instantiate_group

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
    if is_rank_zero():
        atomic_write_text(f, rid)
    return rid


def build_loggers(logger_cfg, run_dir: Path) -> list[Logger]:
    """Instantiate each non-null entry of the ``logger`` config (``_target_`` configs); a null
    ``save_dir`` means the run dir. The CSV logger is always there (first): it is the run's record."""

    def default_save_dir(entry: dict) -> None:
        if entry.get("save_dir", "unset") is None:
            entry["save_dir"] = str(run_dir)

    hint = "choose logger=wandb, csv, tensorboard, default or none, or name a class with +logger.{name}._target_=..."
    loggers = instantiate_group(logger_cfg, "logger", Logger, hint, prepare=default_save_dir)
    if not any(isinstance(lg, CSVLogger) for lg in loggers):
        loggers.append(AppendingCSVLogger(run_dir))
    return sorted(loggers, key=lambda lg: not isinstance(lg, CSVLogger))


def wandb_logger(save_dir: str, project: str = "partialnet", entity: str | None = None, mode: str = "offline",
                 group: str | None = None, tags: list | None = None, **kwargs) -> Logger:
    """Lightning's ``WandbLogger``, offline unless asked and possible, with an id kept in
    ``<save_dir>/wandb_id`` so a resumed run continues the same W&B run."""
    from pytorch_lightning.loggers import WandbLogger

    run_dir = Path(save_dir)
    mode = str(mode)
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
        project=project or "partialnet",
        entity=entity,
        group=group,
        tags=list(tags or []),
        name=kwargs.pop("name", None) or run_dir.name,
        save_dir=str(run_dir),
        id=wandb_run_id(run_dir),
        resume="allow",
        mode=mode,
        **kwargs,
    )
    logger._wandb_init.pop("anonymous", None)  # Lightning passes a setting wandb deprecated (warns)
    return logger


def finish_wandb(loggers) -> None:
    """Close the W&B run of this job (a multirun starts the next job's run cleanly)."""
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger" and getattr(lg, "_experiment", None) is not None:
            import wandb

            wandb.finish()
