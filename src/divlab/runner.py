"""One run: composed config in, run directory with metrics.json out.

    check config -> run dir -> (finished? report) -> build data -> task.builder(cfg, datamodule)
    (models, teacher, checks; tasks/<task>.py) -> Trainer.fit (resuming from last.ckpt) -> test (final and best) -> metrics.json -> `run_dir: ...`
"""

import logging
import os
import platform
import shutil
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from divlab.errors import ConfigError
from divlab.utils.checks import build, check_config
from divlab.utils.hashing import prune_unused, run_config_hash
from divlab.utils.io import atomic_write_json, atomic_write_text, read_json


def _no_tips(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("💡")


def quiet_lightning() -> None:
    """Drop Lightning's advertising tip and a deprecation warning it raises against itself."""
    rank_zero_logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _no_tips not in rank_zero_logger.filters:
        rank_zero_logger.addFilter(_no_tips)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def run_directory(cfg: DictConfig) -> Path:
    """outputs/<task>/<experiment>/<config hash>/seed<k>; deterministic, so reruns resume."""
    return (Path(cfg.paths.output_root) / cfg.task.name / str(cfg.experiment_name)
            / run_config_hash(cfg) / f"seed{cfg.seed}")


def is_rank_zero() -> bool:
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def say(*lines: str) -> None:
    if is_rank_zero():
        for line in lines:
            print(line, flush=True)


def format_metrics(metrics: dict, limit: int = 6) -> str:
    """The test metrics (final, then best checkpoint), else validation ones; at most `limit`."""
    keys = [k for k in metrics if k.startswith("test/")] + [k for k in metrics if k.startswith("best/test/")]
    keys = keys or [k for k in metrics if k.startswith(("best/val/", "val/"))]
    return "  ".join(f"{k}={metrics[k]:.4f}" for k in keys[:limit])


def library_versions() -> dict:
    import hydra
    import lightning
    import torch

    import divlab

    return {"python": platform.python_version(), "torch": torch.__version__,
            "lightning": lightning.__version__, "hydra": hydra.__version__, "divlab": divlab.__version__}


def check_resumable(last: Path) -> None:
    from divlab.teacher import read_divlab_checkpoint

    read_divlab_checkpoint(last, key=f"the run checkpoint (delete it, or set rerun=true) {last}")


def build_callbacks(cfg: DictConfig, extra=()) -> list:
    from lightning.pytorch.callbacks import ProgressBar

    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    if not cfg.trainer.get("enable_progress_bar", True):
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    return callbacks + list(extra)


def build_loggers(cfg: DictConfig) -> list:
    specs = [c for c in (cfg.get("logger") or {}).values() if c]
    if any("Wandb" in str(s.get("_target_", "")) for s in specs):
        os.environ.setdefault("WANDB_MODE", "offline")    # offline unless the user says otherwise
        wandb_dir = Path(cfg.run_dir) / "wandb"
        for var, sub in (("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config"),
                         ("WANDB_DATA_DIR", "data")):
            os.environ.setdefault(var, str(wandb_dir / sub))
    return [instantiate(s) for s in specs]


def finish_loggers(loggers: list) -> None:
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            import wandb

            wandb.finish()


def task_builder(cfg: DictConfig):
    """The function `task.builder` names: (cfg, datamodule=...) -> LightningModule."""
    from hydra.utils import get_method

    name = cfg.task.get("builder")
    try:
        return get_method(name)
    except Exception:
        raise ConfigError(f"task.builder={name!r} is not an importable function (cfg, datamodule) -> "
                          f"LightningModule; fix task.builder in conf/task/{cfg.task.name}.yaml") from None


def progress(trainer, last: Path) -> dict:
    """epochs and global_step of the fit; under ddp_spawn the parent's trainer never stepped, so they
    come from checkpoints/last.ckpt (written by the spawned rank 0)."""
    if trainer.global_step == 0 and last.exists():
        import torch

        ckpt = torch.load(last, map_location="cpu", weights_only=True)
        return {"epochs": int(ckpt.get("epoch", 0)) + 1, "global_step": int(ckpt.get("global_step", 0))}
    return {"epochs": trainer.current_epoch, "global_step": trainer.global_step}


def run(cfg: DictConfig, *, extra_callbacks=()) -> dict:
    """Train and test one config; returns the metrics.json record."""
    import lightning.pytorch as pl

    start = time.time()
    quiet_lightning()
    prune_unused(cfg)
    check_config(cfg)
    run_dir = run_directory(cfg)
    cfg.run_dir = str(run_dir)
    metrics_path = run_dir / "metrics.json"
    if metrics_path.exists() and not cfg.rerun:
        record = read_json(metrics_path)
        say(f"run already finished (rerun=true trains it again): {format_metrics(record['metrics'])}",
            f"run_dir: {run_dir}")
        return record

    # Build everything that can fail on bad input before anything is written or deleted.
    datamodule = build(cfg.data.datamodule, seed=cfg.seed)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    task = task_builder(cfg)(cfg, datamodule=datamodule)
    last = run_dir / "checkpoints" / "last.ckpt"
    if cfg.rerun and run_dir.exists():
        if is_rank_zero():
            shutil.rmtree(run_dir)
    elif last.exists():
        check_resumable(last)

    if is_rank_zero():
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        if cfg.get("print_config", True):
            from divlab.utils.printing import print_config_tree

            print_config_tree(cfg)
    loggers = build_loggers(cfg)
    try:
        trainer = instantiate(cfg.trainer, logger=loggers or False,
                              callbacks=build_callbacks(cfg, extra_callbacks))
        resume = str(last) if last.exists() and not cfg.rerun else None
        say(f"resuming from {last}" if resume else f"training {cfg.task.name} in {run_dir}")
        if cfg.task.get("fit", True):
            trainer.fit(task, datamodule=datamodule, ckpt_path=resume)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if k.startswith(("val/", "best/", "train/")) and v.numel() == 1}
        metrics.update({k: float(v) for k, v in
                        trainer.test(task, datamodule=datamodule, verbose=False)[0].items()})
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if best and Path(best).exists():
            best_test = trainer.test(task, datamodule=datamodule, ckpt_path=best, verbose=False)[0]
            metrics.update({f"best/{k}": float(v) for k, v in best_test.items()})
    finally:
        finish_loggers(loggers)

    record = {
        "metrics": metrics, "config_hash": run_dir.parent.name, "seed": cfg.seed, "task": cfg.task.name,
        "experiment": str(cfg.experiment_name), "run_dir": str(run_dir), "resumed_from": resume,
        **progress(trainer, last),
        "world_size": trainer.world_size, "wall_time_s": round(time.time() - start, 2),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": library_versions(),
    }
    if trainer.is_global_zero:
        atomic_write_json(metrics_path, record)
    say(f"finished: {format_metrics(metrics)}", f"run_dir: {run_dir}")
    return record
