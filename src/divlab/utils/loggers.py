"""The run's Lightning loggers (conf/logger): built from cfg.logger, given the resolved config as
hyperparameters and the Hydra group choices (`hydra.runtime.choices`) as tags.

- CSV and TensorBoard: the resolved config, plus `choices`, in <run_dir>/<logger>/hparams.yaml.
- CSV (HistoryCSVLogger): <run_dir>/csv/metrics.csv holds the run's whole history: each row is written as it is
  logged, and a run resumed from a checkpoint keeps the rows logged up to that checkpoint.
- wandb: the same as the run's config, the choices as tags (`experiment=kd/digits`, `divergence=forward_kl`,
  ...), and one run id per run directory (<run_dir>/wandb_id.txt), passed with resume="allow", so a
  killed or requeued run continues the same wandb run instead of starting a new one.
"""

import csv
import io
import os
import secrets
import string
from pathlib import Path

from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from omegaconf import DictConfig, OmegaConf

from divlab.utils.io import atomic_write_text

WANDB_ID_FILE = "wandb_id.txt"
TAG_LIMIT = 64  # wandb refuses longer tags


def _rank_zero() -> bool:
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def hydra_choices(cfg: DictConfig | None = None) -> dict[str, str]:
    """{group: option} of the composed config; {} outside a Hydra app. Left out: Hydra's own groups and, given
    cfg, the groups the task does not use (pruned to None, e.g. the teacher of a CE-only run)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices
    unused = {k for k in (cfg or {}) if cfg.get(k) is None}
    return {
        k: str(v)
        for k, v in choices.items()
        if v is not None and k != "hydra" and not k.startswith("hydra/") and k.split("/")[0] not in unused
    }


def choice_tags(choices: dict[str, str]) -> list[str]:
    return [f"{group}={option}"[:TAG_LIMIT] for group, option in sorted(choices.items())]


def wandb_run_id(run_dir: Path) -> str:
    """The wandb id stored in the run directory, created (and stored) on the run's first start."""
    path = Path(run_dir) / WANDB_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # wandb's form
    if _rank_zero():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, run_id + "\n")
    return run_id


def checkpoint_position(path: str | os.PathLike) -> tuple[int, int]:
    """(epoch, logging step) a Lightning checkpoint was saved at; the logging step is the one loggers use
    (batches that stepped), which differs from global_step when a task steps several optimisers."""
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    loop = ckpt.get("loops", {}).get("fit_loop", {}).get("epoch_loop.state_dict", {})
    return int(ckpt["epoch"]), int(loop.get("_batches_that_stepped", ckpt["global_step"]))


def _logged_before(row: dict, epoch: int, step: int) -> bool:
    """Whether a metrics.csv row was logged before a checkpoint of (epoch, step): the epoch-end rows of
    epoch k have step (batches of epochs 0..k) - 1; rows without an epoch (logged by hand) go by step."""
    return float(row["step"]) < step and float(row.get("epoch") or 0) <= epoch


class _HistoryWriter(ExperimentWriter):
    """Lightning's CSV writer, except that resuming keeps the rows logged before the checkpoint (instead of
    deleting metrics.csv) and drops the later ones, which the resumed run logs again."""

    def __init__(self, log_dir: str, *, resume_from: str | None):
        self.resume_from = resume_from
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        if self.resume_from is None or not self._fs.isfile(self.metrics_file_path):
            return super()._check_log_dir_exists()  # a fresh run: an old metrics.csv is deleted
        epoch, step = checkpoint_position(self.resume_from)
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            reader = csv.DictReader(f)
            kept = [r for r in reader if _logged_before(r, epoch, step)]
            self.metrics_keys = sorted(reader.fieldnames or [])
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=self.metrics_keys)
        writer.writeheader()
        writer.writerows(kept)
        atomic_write_text(self.metrics_file_path, text.getvalue())


class HistoryCSVLogger(CSVLogger):
    """Lightning's CSVLogger keeping the run's whole history in <save_dir>/<name>/metrics.csv across kills and
    resumes: every row is appended when it is logged, so a kill loses none (flush_logs_every_n_steps=1), and
    a resumed run keeps the rows logged up to its checkpoint. New metric columns rewrite the header."""

    def __init__(
        self,
        *,
        save_dir: str,  # the run directory
        name: str = "csv",  # files go to <save_dir>/<name>/<version>
        version: str = "",  # "": no version folder (one run per run directory)
        resume_from: str | None = None,  # checkpoint the run resumes from (set by the runner); None: new file
        flush_logs_every_n_steps: int = 1,  # write rows every n logging steps; 1: a kill loses none
    ):
        super().__init__(
            save_dir, name=name, version=version, flush_logs_every_n_steps=flush_logs_every_n_steps
        )
        self.resume_from = None if resume_from is None else str(resume_from)

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _HistoryWriter(self.log_dir, resume_from=self.resume_from)
        return self._experiment


def build_loggers(cfg: DictConfig, choices: dict[str, str] | None = None, *, resume=None) -> list:
    """The loggers of cfg.logger; a WandbLogger gets id/resume/tags unless its config sets them, a
    HistoryCSVLogger the checkpoint the run resumes from (`resume`)."""
    choices = hydra_choices(cfg) if choices is None else choices
    loggers = []
    for spec in [c for c in (cfg.get("logger") or {}).values() if c]:
        extra = {}
        target = str(spec.get("_target_", ""))
        if target.startswith("divlab.") and issubclass(get_class(target), HistoryCSVLogger):
            extra = {"resume_from": None if resume is None else str(resume)}
        elif "Wandb" in str(spec.get("_target_", "")):
            os.environ.setdefault("WANDB_MODE", "offline")  # offline unless the user says otherwise
            wandb_dir = Path(cfg.run_dir) / "wandb"
            for var, sub in (
                ("WANDB_CACHE_DIR", "cache"),
                ("WANDB_CONFIG_DIR", "config"),
                ("WANDB_DATA_DIR", "data"),
            ):
                os.environ.setdefault(var, str(wandb_dir / sub))
            defaults = {
                "id": lambda: wandb_run_id(Path(cfg.run_dir)),
                "resume": lambda: "allow",
                "tags": lambda: choice_tags(choices),
            }
            extra = {k: make() for k, make in defaults.items() if spec.get(k) is None}
        loggers.append(instantiate(spec, **extra))
    return loggers


def config_params(cfg: DictConfig, choices: dict[str, str] | None = None) -> dict:
    """The resolved config (without Hydra's own node) and the group choices, as one dict."""
    params = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "hydra"}
    params["choices"] = hydra_choices(cfg) if choices is None else choices
    return params


class LogConfig(Callback):
    """Logs the run's config as hyperparameters when fitting (or, for a task that does not fit, testing)
    starts: inside the process that trains, so spawned DDP ranks (ddp_spawn) log it too (rank 0 writes)."""

    def __init__(self, params: dict):
        self.params, self.logged = params, False

    def _log(self, trainer) -> None:
        if not self.logged:
            for logger in trainer.loggers:
                logger.log_hyperparams(self.params)
            self.logged = True

    def on_fit_start(self, trainer, pl_module) -> None:
        self._log(trainer)

    def on_test_start(self, trainer, pl_module) -> None:
        self._log(trainer)


def finish_loggers(loggers: list) -> None:
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            import wandb

            wandb.finish()
