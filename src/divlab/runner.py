"""One run: composed config in, run directory with metrics.json out.

check config -> run dir -> (finished? report) -> build data -> task.builder(cfg, datamodule)
(models, teacher, checks; tasks/<task>.py) -> Trainer.fit (resuming from last.ckpt) -> test (final and best) -> metrics.json -> `run_dir: ...`
"""

import logging
import platform
import shutil
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from divlab.errors import ConfigError
from divlab.utils.checks import build, check_config, instantiation_error
from divlab.utils.console import is_rank_zero, say
from divlab.utils.hashing import prune_unused, run_config_hash
from divlab.utils.io import atomic_write_json, atomic_write_text
from divlab.utils.loggers import LogConfig, build_loggers, config_params, finish_loggers, hydra_choices
from divlab.utils.rundir import FAILED, FiniteLoss, blame_key, mark_failed, read_finished, run_lock
from divlab.utils.threads import apply_threads


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
    return (
        Path(cfg.paths.output_root)
        / cfg.task.name
        / str(cfg.experiment_name)
        / run_config_hash(cfg)
        / f"seed{cfg.seed}"
    )


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

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "hydra": hydra.__version__,
        "divlab": divlab.__version__,
    }


def check_resumable(last: Path) -> None:
    from divlab.provision.teacher import read_divlab_checkpoint

    try:
        ckpt = read_divlab_checkpoint(last, key="checkpoint")
    except ConfigError:
        ckpt = None
    if ckpt is None or ckpt["divlab"].get("kind") != "lightning":
        raise ConfigError(
            f"{last} is not a divlab run checkpoint to resume from (corrupt, or a teacher's); "
            f"delete it, or set rerun=true to train the run again"
        )


def build_callbacks(cfg: DictConfig, extra=()) -> list:
    from lightning.pytorch.callbacks import ProgressBar

    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    if not cfg.trainer.get("enable_progress_bar", True):
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    return callbacks + list(extra)


def resume_checkpoint(run_dir: Path) -> Path | None:
    """The newest of checkpoints/last.ckpt (end of an epoch) and hpc_ckpt_<n>.ckpt (written by Lightning's
    SLURM auto-requeue when the job got SIGUSR1, possibly mid-epoch; trainer.default_root_dir is run_dir)."""
    found = [
        p for p in [run_dir / "checkpoints" / "last.ckpt", *run_dir.glob("hpc_ckpt_*.ckpt")] if p.is_file()
    ]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def compile_trained_model(task) -> str:
    """compile=true: torch.compile the module the task trains (task.model, or task.generator) in place;
    nn.Module.compile keeps the state_dict keys, so checkpoints load with or without compile."""
    import torch

    for name in ("model", "generator"):
        module = getattr(task, name, None)
        if isinstance(module, torch.nn.Module):
            module.compile()
            return name
    raise ConfigError(
        f"compile=true: {type(task).__name__} has no `model` or `generator` module to compile; "
        f"set compile=false"
    )


def task_builder(cfg: DictConfig):
    """The function `task.builder` names: (cfg, datamodule=...) -> LightningModule."""
    from hydra.utils import get_method

    name = cfg.task.get("builder")
    try:
        return get_method(name)
    except Exception:
        raise ConfigError(
            f"task.builder={name!r} is not an importable function (cfg, datamodule) -> "
            f"LightningModule; fix task.builder in conf/task/{cfg.task.name}.yaml"
        ) from None


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
    apply_threads(cfg.get("threads"))
    run_dir = run_directory(cfg)
    cfg.run_dir = str(run_dir)
    metrics_path = run_dir / "metrics.json"
    if metrics_path.exists() and not cfg.rerun:
        record = read_finished(metrics_path)
        say(
            f"run already finished (rerun=true trains it again): {format_metrics(record['metrics'])}",
            f"run_dir: {run_dir}",
        )
        return record

    # Build everything that can fail on bad input before anything is written or deleted.
    try:
        datamodule = build(cfg.data.datamodule, seed=cfg.seed)
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        task = task_builder(cfg)(cfg, datamodule=datamodule)
    except InstantiationException as e:  # a group option that does not fit the others: one sentence
        raise instantiation_error(e) from None
    if cfg.get("compile"):
        compile_trained_model(task)
    with run_lock(run_dir, enabled=is_rank_zero()):  # a second process on this run dir stops here
        try:
            return _train(cfg, run_dir, datamodule, task, start=start, extra_callbacks=extra_callbacks)
        except Exception as e:
            if is_rank_zero():
                mark_failed(run_dir, e)  # recorded as failed, not finished; the next attempt resumes
            raise


def _train(cfg: DictConfig, run_dir: Path, datamodule, task, *, start: float, extra_callbacks=()) -> dict:
    metrics_path = run_dir / "metrics.json"
    last = run_dir / "checkpoints" / "last.ckpt"
    resume = None if cfg.rerun else resume_checkpoint(run_dir)
    if cfg.rerun and run_dir.exists():
        if is_rank_zero():
            shutil.rmtree(run_dir)
    elif resume:
        check_resumable(resume)

    if is_rank_zero():
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        if cfg.get("print_config", True):
            from divlab.utils.printing import print_config_tree

            print_config_tree(cfg)
    choices = hydra_choices(cfg)
    loggers = build_loggers(cfg, choices, resume=resume)  # a resumed run's csv/metrics.csv keeps its history
    try:
        callbacks = build_callbacks(
            cfg, [*extra_callbacks, LogConfig(config_params(cfg, choices)), FiniteLoss(blame=blame_key(cfg))]
        )
        trainer = instantiate(
            cfg.trainer, logger=loggers or False, default_root_dir=str(run_dir), callbacks=callbacks
        )
        resume = str(resume) if resume else None
        say(f"resuming from {resume}" if resume else f"training {cfg.task.name} in {run_dir}")
        if cfg.task.get("fit", True):
            trainer.fit(task, datamodule=datamodule, ckpt_path=resume)
        metrics = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith(("val/", "best/", "train/")) and v.numel() == 1
        }
        metrics.update(
            {k: float(v) for k, v in trainer.test(task, datamodule=datamodule, verbose=False)[0].items()}
        )
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if best and Path(best).exists():
            best_test = trainer.test(task, datamodule=datamodule, ckpt_path=best, verbose=False)[0]
            metrics.update({f"best/{k}": float(v) for k, v in best_test.items()})
    finally:
        finish_loggers(loggers)

    record = {
        "metrics": metrics,
        "config_hash": run_dir.parent.name,
        "seed": cfg.seed,
        "task": cfg.task.name,
        "experiment": str(cfg.experiment_name),
        "run_dir": str(run_dir),
        "resumed_from": resume,
        **progress(trainer, last),
        "world_size": trainer.world_size,
        "wall_time_s": round(time.time() - start, 2),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": library_versions(),
    }
    if trainer.is_global_zero:
        atomic_write_json(metrics_path, record)
        (run_dir / FAILED).unlink(missing_ok=True)
    say(f"finished: {format_metrics(metrics)}", f"run_dir: {run_dir}")
    return record
