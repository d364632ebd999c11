"""The run's Lightning loggers (conf/logger): built from cfg.logger, given the resolved config as
hyperparameters and the Hydra group choices (`hydra.runtime.choices`) as tags.

- CSV and TensorBoard: the resolved config, plus `choices`, in <run_dir>/<logger>/hparams.yaml.
- wandb: the same as the run's config, the choices as tags (`experiment=kd/digits`, `divergence=forward_kl`,
  ...), and one run id per run directory (<run_dir>/wandb_id.txt), passed with resume="allow", so a
  killed or requeued run continues the same wandb run instead of starting a new one.
"""

import os
import secrets
import string
from pathlib import Path

from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
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


def build_loggers(cfg: DictConfig, choices: dict[str, str] | None = None) -> list:
    """The loggers of cfg.logger; a WandbLogger gets id/resume/tags unless its config sets them."""
    choices = hydra_choices(cfg) if choices is None else choices
    loggers = []
    for spec in [c for c in (cfg.get("logger") or {}).values() if c]:
        extra = {}
        if "Wandb" in str(spec.get("_target_", "")):
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
